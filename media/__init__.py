"""airwave.media"""
