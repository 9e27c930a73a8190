"""airwave.actors"""
