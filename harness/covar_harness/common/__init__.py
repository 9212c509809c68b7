"""common stage."""
