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
        register("toy-sized", SizedReader)
        register("toy-redundant", RedundantReader)

    @hookimpl
    def register_dataset_formats(self, register):
        register("toy-masked", load_masked)
        register("toy-sourced", load_sourced)


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


# ---- planted readers of a known patch region (issue 23: object size, redundant evidence) -------------------------
class RegionReader(TopLeftReader):
    """A planted reader on a grid of ``SIDE // patch`` patches: embedding = [a, BIAS] with ``a`` read from the
    KEPT patches of ``read`` only, each contributing its mean colour + 0.1. ``combine`` "sum" adds them (every
    read patch carries part of the evidence); "max" takes the largest, so any one read patch carries nearly all of
    it alone (redundant evidence). With BIAS small every image is predicted "object", so on images labelled
    otherwise every decision is an error driven by the read patches: by the object when they lie inside the mask,
    by the background when they lie outside it."""

    name = "toy:region-reader"
    patch, read, combine, bias = 8, (0, 1, 8, 9), "sum", 0.2

    @property
    def patch_grid(self) -> tuple[int, int]:  # type: ignore[override]
        return (SIDE // self.patch, SIDE // self.patch)

    def patch_tokens(self, pixels, layer=-1):
        g, p = SIDE // self.patch, self.patch
        tiles = pixels.float().unfold(2, p, p).unfold(3, p, p).mean(dim=(-1, -2))  # (B, 3, g, g)
        return tiles.permute(0, 2, 3, 1).reshape(pixels.shape[0], g * g, 3)

    def _embed(self, pixels, keep):  # keep (B, R, N) -> (B, R, 2)
        v = self.patch_tokens(pixels).mean(-1) + 0.1
        read = torch.zeros(v.shape[1], dtype=torch.bool)
        read[list(self.read)] = True
        values = v[:, None, :] * (keep & read).float()
        a = values.sum(-1) if self.combine == "sum" else values.max(-1).values
        return torch.stack([a, torch.full_like(a, self.bias)], dim=-1)

    def encode_images(self, pixels):
        n = (SIDE // self.patch) ** 2
        return self._embed(pixels, torch.ones(pixels.shape[0], 1, n, dtype=torch.bool))[:, 0]


class SizedReader(RegionReader):
    """Reads the top-left 2x2 patches of an 8x8 grid, additively: objects of any size can cover them or not."""

    name = "toy:sized-reader"


class RedundantReader(RegionReader):
    """Reads 4 of 16 patches (the top-left 2x2 of a 4x4 grid) through a max: redundant evidence."""

    name = "toy:redundant-reader"
    patch, read, combine = 16, (0, 1, 4, 5), "max"


QUADRANTS = ((100, 0, 0), (0, 100, 0), (0, 0, 100), (80, 80, 80))  # background colours: TL, TR, BL, BR


def painted(grid: int, cells: dict[tuple[int, int], tuple[int, int, int]], seed: int) -> Image.Image:
    """SIDE x SIDE on a ``grid`` x ``grid`` patch grid: background quadrants in QUADRANTS, ``cells`` {(row, col):
    colour} painted over them, a little noise."""
    p, half = SIDE // grid, grid // 2
    arr = np.zeros((SIDE, SIDE, 3), dtype=np.float32)
    for r in range(grid):
        for c in range(grid):
            colour = cells.get((r, c), QUADRANTS[2 * (r >= half) + (c >= half)])
            arr[r * p : (r + 1) * p, c * p : (c + 1) * p] = colour
    arr += np.random.default_rng(seed).normal(0, 2, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_sourced(root: Path, images: dict[str, tuple[Image.Image, set[tuple[int, int]], int]]) -> Path:
    """A ``toy-sourced`` dataset: images/thing/<source>.png with masks/thing/<source>.png (the object's cells,
    on the image's grid ``images[source][2]``), and an empty "object" class (what the readers predict)."""
    for sub in ("images", "masks"):
        (root / sub / "thing").mkdir(parents=True, exist_ok=True)
        (root / sub / "object").mkdir(parents=True, exist_ok=True)
    for source, (image, cells, grid) in images.items():
        image.save(root / "images" / "thing" / f"{source}.png")
        p, mask = SIDE // grid, np.zeros((SIDE, SIDE), dtype=np.uint8)
        for r, c in cells:
            mask[r * p : (r + 1) * p, c * p : (c + 1) * p] = 255
        Image.fromarray(mask).save(root / "masks" / "thing" / f"{source}.png")
    return root


def load_sourced(ds: dict, data_dir: Path) -> SampleSet:
    """Dataset format ``toy-sourced``: ``toy-masked`` whose file name (without extension) is the sample's
    ``source_id``, so two subsets holding the same names show the same source objects (as COVAR's do)."""
    samples = load_masked(ds, data_dir)
    for s in samples.samples:
        s.meta["source_id"] = Path(s.id).stem
    return samples


def task_yaml(path: Path, name: str, data: Path, fmt: str = "toy-sourced") -> Path:
    body = {
        "task": name,
        "dataset": {"format": fmt, "path": str(data)},
        "templates": ["a photo of a {}."],
        "version": 1,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))  # JSON is YAML
    return path
