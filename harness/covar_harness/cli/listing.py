"""The ``ls`` and ``plugins`` handlers: what the catalogue holds. Apart from ``commands`` (``run``), so that
listing loads the plugins and their registrations but never the run stage (``ls`` stays torch-free).
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from typing import Any

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.common.console import console as _console
from covar_harness.common.console import inert, print_rows, stdout_closed, write_stdout
from covar_harness.data.samples import data_status
from covar_harness.models.specs import resolve_models


def cmd_ls(args: Namespace) -> int:
    catalog = load_catalog(args.include_path)
    if args.what == "models":
        columns = ["name", "family", "source", "tags", "description"]
        rows = []
        for entry in catalog.models:
            ref = resolve_models([entry.name], catalog)[0]
            rows.append(
                [
                    entry.name,
                    ref.family,
                    ref.target if ref.target != entry.name else entry.plugin,
                    ",".join(entry.tags),
                    entry.description,
                ]
            )
    elif args.what == "tasks":
        columns = ["task", "format", "version", "data", "tags", "description"]
        rows = [
            [
                c.task,
                c.dataset["format"],
                c.version,
                data_status(c, catalog, args.data_dir)[0],
                ",".join(c.tags),
                c.description,
            ]
            for c in catalog.tasks
        ]
    else:
        columns = ["name", "plugin", "description"]
        rows = [[e.name, e.plugin, e.description] for e in getattr(catalog, args.what)]
    print_rows(_console(), args.what, columns, rows, wrap=("description",))
    return 0


def cmd_plugins(args: Namespace) -> int:
    """Loaded plugins as a table or JSON; third-party names are shown inert, and ``| head`` ends quietly."""

    catalog = load_catalog()
    rows: list[dict[str, Any]] = [
        {
            "name": p.name,
            "module": p.module,
            "distribution": p.distribution,
            "version": p.version,
            "builtin": p.builtin,
            "hooks": p.hooks,
        }
        for p in catalog.plugins
    ]
    try:
        if args.json:
            write_stdout(json.dumps(inert(rows), indent=2) + "\n")
            return 0
        print_rows(
            _console(),
            "plugins",
            ["name", "distribution", "version", "module", "hooks"],
            [
                [
                    r["name"] + (" (built-in)" if r["builtin"] else ""),
                    r["distribution"],
                    r["version"],
                    r["module"],
                    ", ".join(r["hooks"]),
                ]
                for r in rows
            ],
        )
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_closed()
    return 0
