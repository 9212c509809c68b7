"""What plugins registered: the hook specs, the plugin manager (entry points, the Catalog) and the name registry."""
