"""Built-in plugin (work in progress): custom."""
