"""Utilities every stage uses: console text safety, flags from settings, bounded file reads, statistics."""
