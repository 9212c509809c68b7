"""A small captions dataset (retrieval format) for the retrieval and retrieval-faithfulness tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

WORDS = "red blue green small large dog cat tree house car boat sky road field river cloud".split()
RECALL_NAMES = [f"{side}_retrieval_recall@{k}" for k in (1, 5, 10) for side in ("image", "text")]


def make_captions_dataset(root: Path, n_images: int = 12, seed: int = 0) -> Path:
    """``n_images`` random-noise images (no two alike: no ties) with 2-5 random captions each, as captions.jsonl."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "img" / f"{i:02d}.png")
        captions = [" ".join(rng.choice(WORDS, size=rng.integers(3, 8))) for _ in range(rng.integers(2, 6))]
        lines.append(json.dumps({"file_name": f"img/{i:02d}.png", "captions": captions}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_yaml(path: Path, data: Path, **dataset) -> Path:
    body = {
        "task": "toy/retrieval",
        "dataset": {"format": "retrieval", "path": str(data), **dataset},
        "headline": "text_retrieval_recall@1",
    }
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path
