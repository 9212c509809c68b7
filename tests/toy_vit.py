"""A toy ViT with a planted truth, shared by the attribution, diagnosis and faithfulness tests: ``TopLeftReader``
reads only the top-left quarter of the image, ``PlainAdapter`` the same without the attribution capability; the
``toy-masked`` format gives exact top-left masks. The fixtures over them live in ``conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from covar_harness import hookimpl
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.results import files as results

PATCH, SIDE, C_BIAS = 8, 64, 4.0
GRID = SIDE // PATCH
CORNERS = {
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}


# ---- a model whose embedding depends only on the top-left quarter ---------------------------------------------
class TopLeftReader:
    """Patch tokens = mean RGB of each 8x8 patch. Embedding = [sum over KEPT top-left-quarter patches of
    (mean RGB + 0.1), C]: text "object" = [1, 0], anything else = [0, 1]. So s = a / sqrt(a^2 + C^2) falls
    whenever a top-left patch is removed and no other patch can change anything."""

    name = "toy:top-left-reader"
    patch_grid = (GRID, GRID)
    supports_pattern_batches = True

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def preprocess(self, image):
        arr = np.asarray(image.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def patch_tokens(self, pixels, layer=-1):
        p = pixels.float().unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH).mean(dim=(-1, -2))  # (B, 3, g, g)
        return p.permute(0, 2, 3, 1).reshape(pixels.shape[0], GRID * GRID, 3)

    @staticmethod
    def top_left() -> torch.Tensor:
        r, c = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        return ((r < GRID // 2) & (c < GRID // 2)).flatten()

    def _embed(self, pixels, keep):  # keep (B, R, N) -> (B, R, 2)
        v = TopLeftReader.patch_tokens(self, pixels).mean(-1) + 0.1  # PlainAdapter hides the public member
        a = (v[:, None, :] * (keep & self.top_left()).float()).sum(-1)
        return torch.stack([a, torch.full_like(a, C_BIAS)], dim=-1)

    def encode_images(self, pixels):
        return self._embed(pixels, torch.ones(pixels.shape[0], 1, GRID * GRID, dtype=torch.bool))[:, 0]

    def encode_images_without(self, pixels, drop):
        self.calls.append(tuple(drop.shape))
        squeeze = drop.dim() == 2
        out = self._embed(pixels, ~(drop[:, None] if squeeze else drop))
        return out[:, 0] if squeeze else out

    def encode_texts(self, texts):
        return torch.tensor([[1.0, 0.0] if "object" in t else [0.0, 1.0] for t in texts])


class PlainAdapter(TopLeftReader):
    """The same model without the attribution capability."""

    name = "toy:plain"
    patch_grid = None
    patch_tokens = None
    encode_images_without = None


def layout(tl: tuple[str, str], seed: int = 0) -> Image.Image:
    """64x64, 7 colour regions on patch boundaries; the top-left quarter holds the two colours ``tl``."""
    rest = [c for c in ("red", "yellow", "green", "blue", "cyan", "white", "black") if c not in tl]
    arr = np.zeros((SIDE, SIDE, 3), dtype=np.float32)
    arr[:32, :16], arr[:32, 16:32] = CORNERS[tl[0]], CORNERS[tl[1]]
    arr[:32, 32:] = CORNERS[rest[0]]
    arr[32:48, :32], arr[48:, :32] = CORNERS[rest[1]], CORNERS[rest[2]]
    arr[32:, 32:48], arr[32:, 48:] = CORNERS[rest[3]], CORNERS[rest[4]]
    arr += np.random.default_rng(seed).normal(0, 2, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


LAYOUTS = [("red", "yellow"), ("blue", "cyan"), ("green", "white"), ("black", "black")]  # last: an error


# ---- plugging the toys into the real CLI ------------------------------------------------------------------
def load_masked(ds: dict, data_dir: Path) -> SampleSet:
    """Dataset format ``toy-masked``: images/<class>/<file> with masks/<class>/<file> (white = object)."""
    root = Path(ds["path"])
    classes = sorted(p.name for p in (root / "images").iterdir())
    samples = [
        Sample(f"images/{c}/{f.name}", i, {"mask": f"masks/{c}/{f.name}"})
        for i, c in enumerate(classes)
        for f in sorted((root / "images" / c).iterdir())
    ]
    return SampleSet(samples, classes, root, "toy masked")


class ToyPlugin:
    @hookimpl
    def register_models(self, register):
        register("toy-topleft", TopLeftReader)
        register("toy-plain", PlainAdapter)

    @hookimpl
    def register_dataset_formats(self, register):
        register("toy-masked", load_masked)


def run_cli(tmp_path, model: str, task: Path, *extra: str) -> tuple[int, Path]:
    from covar_harness.cli.main import main

    out = tmp_path / "results"
    code = main(
        [
            "run",
            "--models",
            model,
            "--tasks",
            str(task),
            "--output-dir",
            str(out),
            "--workers",
            "0",
            "--batch-size",
            "3",
            "--log-samples",
            "--overwrite",
            *extra,
        ]
    )
    return code, out


def read(out: Path, model: str, task: str) -> tuple[dict, list[dict]]:
    path = results.result_path(out, model, task)
    rows = [json.loads(line) for line in results.samples_path(path).read_text().splitlines()]
    return results.load(path), rows
