"""Built-in plugin (work in progress): cci."""
