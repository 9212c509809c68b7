"""Builders for tiny offline test assets. Importable from any test module (tests/ is on sys.path)."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from covar_harness.data.subsets import ALL_SUBSETS
from covar_harness.masks.step import MaskRecord


def with_masks(batch, grids):
    """``batch`` as the pipeline hands it to the steps after the mask step: one ``MaskRecord`` per row (``grids``:
    per row a patch grid, or None for a sample without a mask)."""
    batch.add([MaskRecord(i, None if g is None else np.asarray(g), {}) for i, g in zip(batch.indices, grids)])
    return batch


TINY_OPENCLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _imports_name(text: str, module: str, name: str) -> bool:
    """Whether ``text`` (a module's source) has ``from <module> import ... name ...`` anywhere (ast, not a regex)."""
    return any(
        isinstance(node, ast.ImportFrom) and node.module == module and any(a.name == name for a in node.names)
        for node in ast.walk(ast.parse(text))
    )


def patch_everywhere(monkeypatch, module, name: str, value) -> None:
    """``monkeypatch.setattr(module, name, value)`` and the same in every module of the harness that imports the
    name itself (``from module import name`` binds it at import, one line or parenthesised): the use sites see the
    patch too. Those modules are imported first, so that none binds the patched value for good by being imported
    during the test."""
    original = getattr(module, name)
    for package in ("covar_harness", "covar_harness_plugins", "covar_harness_tasks"):
        root = Path(importlib.import_module(package).__file__).parent
        for path in root.rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if name in text and _imports_name(text, module.__name__, name):
                parts = path.relative_to(root.parent).with_suffix("").parts
                importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    monkeypatch.setattr(module, name, value)
    for other in list(sys.modules.values()):
        home = getattr(other, "__name__", "") or ""
        if other is not module and home.startswith("covar_harness") and getattr(other, name, None) is original:
            monkeypatch.setattr(other, name, value)


def make_openclip_dir(path: Path, cfg: dict | None = None, seed: int = 0) -> Path:
    """Save a random open_clip model in the ``local-dir:`` layout: open_clip_config.json + safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = cfg or TINY_OPENCLIP_CFG
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fish": (40, 40, 220), "bird": (200, 200, 40)}


class ZeroShotForwards:
    """Counts the open_clip adapter's zero-shot forwards (one per batch of the run's pass: ``encode_images``, or
    ``encode_images_with_tokens`` when CCI takes its tokens from that forward); raises Ctrl-C at call ``stop``.
    What the resume tests count to see that finished batches are not redone."""

    def __init__(self, monkeypatch, stop=None):
        from covar_harness_plugins.openclip import OpenClipAdapter

        self.calls = 0
        for name in ("encode_images", "encode_images_with_tokens"):
            monkeypatch.setattr(OpenClipAdapter, name, self._counting(getattr(OpenClipAdapter, name), stop))

    def _counting(self, real, stop):
        def forward(adapter, pixels, **kw):
            self.calls += 1
            if stop is not None and self.calls == stop:
                raise KeyboardInterrupt
            return real(adapter, pixels, **kw)

        return forward


def make_image(colour, size=40, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_image_folder(root: Path, classes=("cat", "dog", "fish"), per_class: int = 4, size: int = 40) -> Path:
    for ci, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            make_image(COLOURS.get(cls, (128, 128, 128)), size, seed=ci * 100 + j).save(root / cls / f"{j:03d}.png")
    return root


def write_task_yaml(path: Path, name: str, data_path: Path, **extra) -> Path:
    import yaml

    body = {
        "task": name,
        "dataset": {"format": "imagefolder", "path": str(data_path)},
        "templates": ["a photo of a {}."],
        "version": 1,
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


CLI_ENV = {"COLUMNS": "250"}  # rich reads the width from COLUMNS when a command creates its console


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    """Run the real console entry point in a subprocess (exit codes, no shared state).

    Costs a fresh interpreter (torch, open_clip, transformers: seconds each time). Use it only where the process
    itself is under test: imports at ``--help``, kill -9, SIGINT, a closed pipe, environment variables that
    libraries read once at import (HF_HOME). Everything else: ``run_cli_inprocess``, same arguments, same result.
    """
    import os

    full_env = {**os.environ, **CLI_ENV, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "covar_harness.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


class _CliTimeout(BaseException):
    """Raised by run_cli_inprocess's alarm; a BaseException so that the CLI's own ``except Exception`` lets it by."""


def run_cli_inprocess(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """``covar_harness.cli.main.main(args)`` in this process, observed as ``cli`` observes a subprocess.

    Returns a ``CompletedProcess`` with the exit code and the text written to stdout and stderr (UTF-8 streams
    without a terminal, strict on stdout and backslashreplace on stderr, like a child's pipes; rich consoles look
    up ``sys.stdout`` when they print). For the call only, and restored after, whatever happens: ``env`` on top of
    ``os.environ`` (plus COLUMNS=250), ``PYTHONPATH`` entries in front of ``sys.path`` (modules imported from them
    are forgotten after, so the next test imports its own), the working directory, the root logger (emptied, so
    the CLI's ``logging.basicConfig`` writes warnings to this stderr, as in a fresh process) and, with
    ``timeout``, a SIGALRM timer that raises ``subprocess.TimeoutExpired`` as ``subprocess.run`` would.
    Exit codes as a process: ``SystemExit`` (argparse) gives its code, an uncaught exception its traceback on
    stderr and 1.
    """
    import importlib
    import io
    import logging
    import os
    import signal
    import traceback
    from contextlib import redirect_stderr, redirect_stdout

    from covar_harness.cli import main as cli_module

    overrides = {**CLI_ENV, **(env or {})}
    saved_env = {key: os.environ.get(key) for key in overrides}
    extra_paths = [str(Path(p).resolve()) for p in overrides.get("PYTHONPATH", "").split(os.pathsep) if p]
    saved_sys_path = list(sys.path)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_cwd = os.getcwd()
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True)
    alarm = timeout is not None
    previous_alarm = None
    try:
        for key, value in overrides.items():
            os.environ[key] = str(value)
        if extra_paths:
            sys.path[:0] = extra_paths
            importlib.invalidate_caches()
        root.handlers = []
        if cwd is not None:
            os.chdir(cwd)
        if alarm:

            def expire(_signum, _frame):
                raise _CliTimeout

            previous_alarm = signal.signal(signal.SIGALRM, expire)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = cli_module.main(list(args))
            except SystemExit as exc:  # argparse: usage errors (2), --help (0)
                code = exc.code
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
            except Exception:  # uncaught in a real process: traceback on stderr, exit 1
                traceback.print_exc()
                code = 1
            out.flush()
            err.flush()
    except _CliTimeout:
        raise subprocess.TimeoutExpired(["covar-harness", *args], timeout) from None
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.path[:] = saved_sys_path
        if extra_paths:
            for name, module in list(sys.modules.items()):
                origin = getattr(module, "__file__", None) or ""
                if any(origin.startswith(p + os.sep) for p in extra_paths):
                    del sys.modules[name]
            importlib.invalidate_caches()

    def text(raw: bytes, errors: str) -> str:
        return raw.decode("utf-8", errors).replace("\r\n", "\n").replace("\r", "\n")  # as text=True reads it

    return subprocess.CompletedProcess(
        ["covar-harness", *args],
        0 if code is None else int(code),
        text(out_bytes.getvalue(), "strict"),
        text(err_bytes.getvalue(), "replace"),
    )


COVAR_CLASSES = ["cat", "dog", "fish"]
COVAR_SUBSETS = ALL_SUBSETS  # every subset folder, from the harness's one list


def _mask(path: Path) -> None:
    from PIL import Image

    arr = np.zeros((40, 40), np.uint8)
    arr[10:30, 10:30] = 255
    Image.fromarray(arr).save(path)


def make_covar(root: Path, subsets=COVAR_SUBSETS, per_class: int = 2) -> Path:
    """A tiny COVAR copy: labels as names and ints, masks in every other subset, both path conventions."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(COVAR_CLASSES))
    for si, subset in enumerate(subsets):
        (root / subset / "img").mkdir(parents=True, exist_ok=True)
        lines = []
        for ci, cls in enumerate(COVAR_CLASSES):
            for j in range(per_class):
                name = f"img/{cls}{j}.png"
                make_image(COLOURS[cls], seed=si * 100 + ci * 10 + j).save(root / subset / name)
                rec = {
                    "file_name": name if j == 0 else f"{subset}/{name}",  # subset- and root-relative
                    "label": cls if j == 0 else ci,
                    "source_id": f"{cls}-{j}",
                    "variation": {"transform": subset, "k": j},
                }
                if si % 2 == 0:
                    _mask(root / subset / f"img/{cls}{j}.mask.png")
                    rec["mask"] = f"img/{cls}{j}.mask.png"
                lines.append(json.dumps(rec))
        (root / subset / "metadata.jsonl").write_text("\n".join(lines) + "\n\n")
    return root
