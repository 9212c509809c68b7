"""Built-in plugin (work in progress): paper."""
