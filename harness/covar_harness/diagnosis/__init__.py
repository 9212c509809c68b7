"""diagnosis stage."""
