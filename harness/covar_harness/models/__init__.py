"""The model adapter contract (BaseAdapter), model specs and arguments, exact token removal."""
