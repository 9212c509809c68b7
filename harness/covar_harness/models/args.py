"""Per-model arguments (issue 18 item 5): ``--model-args 'precision=bf16,cache_dir=/data/hf'`` for every model of
the run, and ``SPEC@key=value[@key=value]`` for one (``openclip:ViT-B-32/openai@precision=bf16``). A spec's own
arguments win over ``--model-args``, which win over the run's flags.

The keys are the loading settings every model scheme takes: ``precision``, ``device`` and ``cache_dir``. A spec
with arguments is its own model in the results (its ``model.spec`` keeps the ``@...`` part, so a bf16 and an fp32
run of one checkpoint sit side by side on the leaderboard) and ``model.args`` records them. Nothing here imports
torch.
"""

from __future__ import annotations

import difflib
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.flags import parse_value

KEYS = ("precision", "device", "cache_dir")
PRECISIONS = ("fp32", "bf16", "fp16")  # --precision and precision=: what load_model accepts


def parse(text: str | None, separator: str = ",", where: str = "--model-args") -> dict[str, Any]:
    """``key=value`` items joined by ``separator`` -> checked settings; UsageError (exit 2) naming ``where``."""
    out: dict[str, Any] = {}
    for item in (text or "").split(separator):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UsageError(f"{where}: expected key=value (e.g. precision=bf16), got {item.strip()!r}")
        out[key] = parse_value(value.strip())
    check(out, where)
    return out


def check(args: dict[str, Any], where: str) -> None:
    """Unknown keys (with the close match) and values a model cannot load with are usage errors."""
    for key in args:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{where}: unknown model argument {key!r} (known: {', '.join(KEYS)}){hint}")
    if "precision" in args and args["precision"] not in PRECISIONS:
        raise UsageError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {args['precision']!r}")
    for key in ("device", "cache_dir"):
        if key in args and not isinstance(args[key], str):
            raise UsageError(f"{where}: {key} must be text, got {args[key]!r}")


def split_spec(token: str) -> tuple[str, dict[str, Any]]:
    """``SPEC@key=value@key=value`` -> (SPEC, arguments); a token whose ``@`` tail is not key=value items (a path
    with an ``@`` in it) is all spec."""
    head, sep, tail = token.partition("@")
    while sep and "=" not in tail.split("@")[0]:  # that '@' belongs to the spec: look for a later one
        more, sep, tail = tail.partition("@")
        head = f"{head}@{more}"
    if not sep:
        return token, {}
    return head, parse(tail, "@", f"model {token!r}")
