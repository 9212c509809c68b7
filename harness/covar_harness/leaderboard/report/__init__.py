"""The HTML report (issue 17): ``covar-harness report RESULTS_DIR --out SITE_DIR`` and ``leaderboard --format html``.

- `report.html`: escaping, page frame, the sortable leaderboard tables (hover: interval and n);
- :mod:`covar_harness.leaderboard.report.plots`: matplotlib plots (imported only here, never by ``--help``);
- :mod:`covar_harness.leaderboard.report.gallery`: per model x task pages from ``--log-samples`` and ``--save-maps``;
- :mod:`covar_harness.leaderboard.report.site`: the site builder.
"""

from __future__ import annotations

from argparse import Namespace

from covar_harness.catalog.registry import UsageError


def build_site(*args, **kwargs):
    from covar_harness.leaderboard.report.site import build_site as build

    return build(*args, **kwargs)


def cmd_report(args: Namespace) -> int:
    from covar_harness.common.console import console, markup
    from covar_harness.leaderboard.report.site import build_site as build

    if args.gallery < 0:
        raise UsageError("--gallery must be >= 0")
    built = build(
        args.results_dir,
        args.out,
        maps=args.maps,
        reference=args.reference,
        gallery=args.gallery,
        data_dir=args.data_dir,
        include_paths=args.include_path,
        title=args.title,
        console=console(stderr=True),
    )
    console().print(
        f"report: {markup(built.out / 'index.html')} ({built.n_records} result file(s), "
        f"{len(built.plots)} plot(s), {built.pages} model x task page(s), {built.images} overlay(s)"
        + (f", {built.n_invalid} file(s) skipped" if built.n_invalid else "")
        + f") in {built.seconds:.1f} s",
        soft_wrap=True,
    )
    return 0


def cmd_leaderboard(args: Namespace) -> int:
    """``leaderboard``: ``--format html`` is the single self-contained page; every other format is the
    leaderboard command's own (``commands_results.cmd_leaderboard``)."""
    from covar_harness.cli.commands_results import cmd_leaderboard as text_leaderboard

    if getattr(args, "format", None) != "html":
        return text_leaderboard(args)
    import os

    from covar_harness.common.console import console, markup, one_line, stdout_closed, write_stdout
    from covar_harness.leaderboard import tables as lb
    from covar_harness.leaderboard.report.html import leaderboard_page

    if not os.path.isdir(args.results_dir):
        raise UsageError(f"results folder {one_line(args.results_dir)!r} does not exist")
    loaded = lb.collect(args.results_dir)
    err = console(stderr=True)
    for path, why in loaded.invalid:
        err.print(f"[yellow]skipped invalid result {markup(path)}: {markup(why)}[/yellow]", soft_wrap=True)
    if not loaded.records and not loaded.faithfulness and args.reference is None:
        raise UsageError(f"no valid result files under {one_line(args.results_dir)}")
    tables = lb.build_tables(loaded.records, args.reference, loaded.faithfulness)
    names = [(p.name, why) for p, why in loaded.invalid]  # file names only: no local paths in the page
    try:
        write_stdout(leaderboard_page(loaded.records, tables, names))
    except BrokenPipeError:
        return stdout_closed()
    return 0
