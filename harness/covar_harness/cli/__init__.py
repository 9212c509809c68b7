"""The command line: argparse parsers (no torch at import) and the subcommand handlers."""
