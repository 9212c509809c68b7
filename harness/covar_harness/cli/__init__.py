"""The command line: argparse parsers (nothing heavy at import) and the subcommand handlers."""
