"""Tables from result files, their renderers, published rows, peer tables, exports and the report site."""
