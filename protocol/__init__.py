"""airwave.protocol"""
