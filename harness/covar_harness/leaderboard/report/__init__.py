"""The HTML report: `covar-harness report RESULTS_DIR --out SITE_DIR` and `leaderboard --format html` (handlers in
cli.commands_results). `html`: escaping, page frame, the sortable tables; `plots`: matplotlib plots (imported only
here, never by --help); `gallery`: per model x task pages from --log-samples and --save-maps; `site`: the builder.
"""
