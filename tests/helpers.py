"""Builders for tiny offline test assets. Importable from any test module (tests/ is on sys.path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

TINY_OPENCLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


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

    body = {"task": name, "dataset": {"format": "imagefolder", "path": str(data_path)},
            "templates": ["a photo of a {}."], "version": 1, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 300):
    """Run the real console entry point in a subprocess (exit codes, no shared state)."""
    import os

    full_env = {**os.environ, "COLUMNS": "250", **(env or {})}
    return subprocess.run([sys.executable, "-m", "covar_harness.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


COVAR_CLASSES = ["cat", "dog", "fish"]
COVAR_SUBSETS = ("original", "bg_varied", "hflip", "translate", "crop", "vflip", "rotation", "viewpoint", "scale")


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
                rec = {"file_name": name if j == 0 else f"{subset}/{name}",  # subset- and root-relative
                       "label": cls if j == 0 else ci, "source_id": f"{cls}-{j}",
                       "variation": {"transform": subset, "k": j}}
                if si % 2 == 0:
                    _mask(root / subset / f"img/{cls}{j}.mask.png")
                    rec["mask"] = f"img/{cls}{j}.mask.png"
                lines.append(json.dumps(rec))
        (root / subset / "metadata.jsonl").write_text("\n".join(lines) + "\n\n")
    return root
