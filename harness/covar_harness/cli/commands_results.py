"""Handlers of the results and data commands: leaderboard (text formats), validate, init-leaderboard, data.

``commands`` holds ``run`` (and ``prepare_run``, shared with the Python API), ``ls`` and ``plugins``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from argparse import Namespace
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from covar_harness import __version__
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.cli.analysis import leaderboard_comparison
from covar_harness.common.console import console, markup, one_line, stdout_closed, write_stdout
from covar_harness.common.console import console as _console
from covar_harness.common.safe_files import atomic_write
from covar_harness.data.resources import resource_text
from covar_harness.data.samples import data_status, resolve_dataset
from covar_harness.leaderboard import render
from covar_harness.leaderboard import tables as lb
from covar_harness.leaderboard.report.html import leaderboard_page
from covar_harness.leaderboard.report.site import build_site as build
from covar_harness.models.specs import registered_target
from covar_harness.results import files as results
from covar_harness.results import validation
from covar_harness.results.files import DISTRIBUTION, run_git
from covar_harness.results.submission import StrictChecker, known_fingerprints


def cmd_leaderboard(args: Namespace) -> int:
    """Tables from a folder of result files. Each unusable file is skipped with one line; ``--reference paper``
    shows the published rows even without own results; ``| head`` ends quietly."""

    if not os.path.isdir(args.results_dir):  # never raises, even for a name too long for the OS
        raise UsageError(f"results folder {one_line(args.results_dir)!r} does not exist")
    loaded = lb.collect(args.results_dir)
    err = _console(stderr=True)
    for path, why in loaded.invalid:
        err.print(f"[yellow]skipped invalid result {markup(path)}: {markup(why)}[/yellow]")
    if not loaded.records and not loaded.faithfulness and args.reference is None:
        raise UsageError(f"no valid result files under {one_line(args.results_dir)}")
    if not loaded.records and not loaded.faithfulness:
        err.print(f"[yellow]no valid result files under {markup(args.results_dir)}: published rows only[/yellow]")
    tables = lb.build_tables(loaded.records, args.reference, loaded.faithfulness)
    if getattr(args, "compare", None):  # the paired test of two models (table and markdown; csv / json: `compare`)
        tables.append(leaderboard_comparison(args.results_dir, args.compare))
    try:
        if args.format == "html":  # one self-contained page; file names only: no local paths in it
            write_stdout(leaderboard_page(loaded.records, tables, [(p.name, why) for p, why in loaded.invalid]))
        elif args.format == "table":
            render.render_rich(tables, _console())
            sys.stdout.flush()
        elif args.format == "markdown":
            write_stdout(render.render_markdown(tables))
        elif args.format == "csv":
            write_stdout(render.render_csv(loaded.records, args.reference, loaded.faithfulness))
        else:
            write_stdout(render.render_json(loaded.records, tables, args.reference, loaded.faithfulness) + "\n")
    except BrokenPipeError:
        return stdout_closed()
    return 0


def cmd_report(args: Namespace) -> int:
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


def _strict_checker(args: Namespace):
    """``validate --strict``: the submission checks (covar_harness.results.submission), or None without the flag."""
    if not getattr(args, "strict", False):
        if getattr(args, "fingerprints", None) is not None:
            raise UsageError("--fingerprints needs --strict")
        return None

    catalog = load_catalog()  # model names as this install registers them: model.target is checked against it
    return StrictChecker(known_fingerprints(args.fingerprints), lambda spec: registered_target(spec, catalog))


def cmd_validate(args: Namespace) -> int:
    """Check result files (a folder stands for every ``*.json`` under it): 0 all valid, 1 any invalid, 2 a path
    that does not exist or a folder without result files (one line, before anything is checked)."""

    files, problems = results.expand_paths(args.files)
    strict = _strict_checker(args)
    bad = len(problems)
    try:
        for path, why in problems:
            write_stdout(f"{one_line(path)}: {one_line(why)}\n")
        for path in files:
            try:
                obj = results.load(path)
                errors = validation.validate_any(obj)  # classification or faithfulness results
                if strict is not None and not errors:
                    errors = strict.problems(path, obj)
            except Exception as exc:  # noqa: BLE001 - one line per unusable file, never a traceback
                errors = [f"cannot read: {str(exc) or type(exc).__name__}"]
            bad += bool(errors)
            for e in errors or ["ok"]:
                write_stdout(f"{one_line(path)}: {one_line(e)}\n")
        total = len(files) + len(problems)
        if total > 1:
            write_stdout(f"{total} file(s): {total - bad} ok, {bad} invalid\n")
    except BrokenPipeError:
        return stdout_closed()
    return 1 if bad else 0


LEADERBOARD_FILES = {".github/workflows/leaderboard.yml": "leaderboard.yml", "leaderboard-ci.sh": "leaderboard-ci.sh"}


def cmd_init_leaderboard(args: Namespace) -> int:
    """Copy the leaderboard CI template into a repository; never overwrite what is there."""

    root = Path(args.dir)
    taken = [name for name in LEADERBOARD_FILES if (root / name).exists()]
    if taken:
        raise UsageError(f"{root}: {', '.join(taken)} already exist(s); nothing written (move them away first)")
    spec, how = (args.harness_spec, "") if args.harness_spec else harness_source(_direct_url(), run_git)
    if any(c in spec for c in '\n\r"`$'):
        raise UsageError("--harness-spec must be one pip requirement without quotes, $ or backticks")
    for name, template in LEADERBOARD_FILES.items():
        text = resource_text("leaderboard", template).replace("__HARNESS_SPEC__", spec)
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda fh, text=text: fh.write(text))
    (root / "results").mkdir(parents=True, exist_ok=True)
    _console().print(
        f"wrote {markup(root / '.github/workflows/leaderboard.yml')} and {markup(root / 'leaderboard-ci.sh')}; "
        f"put result files under {markup(root / 'results')}/ and try: bash leaderboard-ci.sh main",
        soft_wrap=True,
    )
    if how:  # the default: say what the workflow installs and why, in one line
        _console(stderr=True).print(
            f"the workflow installs {markup(spec)}: {markup(how)}"
            + ("" if "--harness-spec" in how else " (--harness-spec to change it)"),
            soft_wrap=True,
        )
    return 0


def _direct_url() -> dict | None:
    """This installation's PEP 610 record (``direct_url.json``): where pip installed the harness from."""
    try:
        text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
        found = json.loads(text) if text else None
    except (metadata.PackageNotFoundError, ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None


def harness_source(direct: dict | None, git: Callable[..., str | None]) -> tuple[str, str]:
    """(pip requirement, why) for the leaderboard workflow: the source this harness was installed from.

    A git install: its URL and commit. A local checkout (``pip install -e .``): the checkout's ``origin`` remote
    at its HEAD commit. Else the release ``covar-harness==<version>``, which only exists once published: said
    so, with the flag that sets another source. Credentials in a URL never reach the workflow."""
    release = f"{DISTRIBUTION}=={__version__}"
    url = str((direct or {}).get("url") or "")
    vcs = (direct or {}).get("vcs_info") or {}
    if isinstance(vcs, dict) and vcs.get("vcs") == "git" and _public_url(url):
        at = f"@{vcs['commit_id']}" if vcs.get("commit_id") else ""
        return f"{DISTRIBUTION} @ git+{_public_url(url)}{at}", "the git URL this harness was installed from"
    if url.startswith("file://"):
        folder = Path(url2pathname(urlparse(url).path))
        remote, commit = git(folder, "remote", "get-url", "origin"), git(folder, "rev-parse", "HEAD")
        if remote and _public_url(remote) and commit:
            why = f"the origin remote of the checkout {folder} at its HEAD commit (push that commit first)"
            return f"{DISTRIBUTION} @ git+{_public_url(remote)}@{commit}", why
        return release, (
            f"this harness was installed from the folder {folder}, which has no git remote a CI machine could "
            f"install from, so the workflow assumes {release} is published on PyPI; if it is not, pass "
            "--harness-spec 'covar-harness @ git+https://HOST/OWNER/covar-harness@COMMIT'"
        )
    if url.startswith(("https://", "http://")) and _public_url(url):
        return f"{DISTRIBUTION} @ {_public_url(url)}", "the URL this harness was installed from"
    return release, "the release installed here (from PyPI)"


def _public_url(url: str) -> str:
    """``url`` as an https URL without credentials (``git@host:path`` and ``ssh://`` forms too); empty when it
    is none of these or holds a character a workflow line must not."""
    url = url.strip().removeprefix("git+")
    scp = re.fullmatch(r"[\w.-]+@([\w.-]+):(?!//)(.+)", url)
    if scp:
        url = f"https://{scp.group(1)}/{scp.group(2)}"
    parts = urlparse(url)
    if parts.scheme not in ("https", "http", "ssh") or not parts.hostname:
        return ""
    host = parts.hostname + (f":{parts.port}" if parts.port and parts.scheme != "ssh" else "")
    clean = f"https://{host}{parts.path}"
    return "" if re.search(r"[\s\"'`$\\]", clean) else clean


def cmd_data(args: Namespace) -> int:
    """``data where``: status, path and layout per task; ``data fetch``: download hub datasets into the HF cache."""

    catalog = load_catalog(args.include_path)
    tasks = catalog.tasks.resolve(args.tasks)
    if args.action == "fetch":
        return _fetch(tasks, catalog, args.data_dir)
    out = _console()
    for cfg in tasks:
        status, detail = data_status(cfg, catalog, args.data_dir)
        layout = catalog.formats.entry(cfg.dataset["format"]).description
        out.print(f"[bold]{markup(cfg.task)}[/bold]: {markup(status)}", soft_wrap=True)
        out.print(f"  format {markup(cfg.dataset['format'])}: {markup(layout)}", soft_wrap=True)
        out.print(f"  {'where' if status in ('present', 'on first use') else 'why'}: {markup(detail)}", soft_wrap=True)
    return 0


def _fetch(tasks: list, catalog, data_dir) -> int:
    """Download the tasks whose data is a Hugging Face Hub dataset; anything else says where to get it (exit 2)."""

    hub, out = [], _console()
    for cfg in tasks:
        ds, _root = resolve_dataset(cfg, data_dir)
        status, detail = data_status(cfg, catalog, data_dir)
        source = ds.get("hf_id") or (ds.get("raw_path") if ds.get("format") == "hf" else None)
        if status == "present":
            out.print(f"{markup(cfg.task)}: data present at {markup(detail)}; nothing to fetch", soft_wrap=True)
            continue
        if status == "on first use" and not source:  # generated data (COVAR-Shapes): nothing to download
            out.print(
                f"{markup(cfg.task)}: generated on first use by `covar-harness run` into {markup(detail)}; "
                "nothing to fetch",
                soft_wrap=True,
            )
            continue
        if status != "on first use":
            raise UsageError(f"task {cfg.task!r}: its data is not on the Hugging Face Hub: {detail}")
        hub.append((cfg, ds, str(source)))
    for cfg, ds, source in hub:
        import datasets  # lazy: optional dependency, imported where used

        try:
            datasets.load_dataset(source, ds.get("name"), split=ds.get("split", "test"), revision=ds.get("revision"))
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types; one line each
            raise UsageError(f"task {cfg.task!r}: could not download {source!r}: {str(exc).splitlines()[0]}") from None
        out.print(f"fetched {markup(source)} for {markup(cfg.task)}", soft_wrap=True)
    return 0
