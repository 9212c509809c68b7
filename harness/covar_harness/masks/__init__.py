"""masks stage."""
