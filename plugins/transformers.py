"""Built-in plugin (work in progress): transformers."""
