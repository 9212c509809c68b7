"""The ``waterbirds`` dataset format: the Waterbirds release of Sagawa et al. (2020), test split by default.

Layout, as ``waterbird_complete95_forest2water2.tar.gz`` unpacks (github.com/kohpangwei/group_DRO)::

    waterbird_complete95_forest2water2/
        metadata.csv            img_id, img_filename, y, split, place, place_filename
        001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg
        ...

``y`` is 0 landbird / 1 waterbird, ``place`` 0 land / 1 water, ``split`` 0 train / 1 val / 2 test; image paths
(``img_filename``) are relative to the folder holding ``metadata.csv``. Each sample carries meta ``group`` =
``"<bird> on <place>"`` (e.g. ``"waterbird on land"``), which the evaluator turns into per-group accuracy,
``worst_group_acc`` and ``group_acc_gap`` (harness/covar_harness/run/group_metrics.py). The SampleSet's
``group_weights`` are the training split's group sizes, counted from ``metadata.csv`` (3498 / 184 / 56 / 1057 on the
release: the constants of WILDS's ``waterbirds_dataset.py``), so the results also carry WILDS's ``adj_acc_avg`` (the
group accuracies weighted by them), the average published Waterbirds tables report, and the gap is taken from it;
``acc1`` stays the plain test average (group_DRO's ``loss.py``).

Dataset keys (task YAML ``dataset:``): ``path`` (the release folder, or a folder holding it), ``split``
(train | val | test, default test).
"""

from __future__ import annotations

from pathlib import Path

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import read_text_capped
from covar_harness.data.resources import parse_csv
from covar_harness.data.samples import DatasetNotFound, Sample, SampleSet

RELEASE_DIR = "waterbird_complete95_forest2water2"
METADATA = "metadata.csv"
COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")
SPLITS = {"train": "0", "val": "1", "test": "2"}
BIRDS = ("landbird", "waterbird")
PLACES = ("land", "water")
DOWNLOAD = (
    "Download https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz (linked from "
    "github.com/kohpangwei/group_DRO) and unpack it into the data dir, so that "
    "{path}/metadata.csv exists (or point --data-dir / dataset.path at it)"
)


def group_name(y: int, place: int) -> str:
    """``"waterbird on land"`` and friends: the four (bird type, background) groups."""
    return f"{BIRDS[y]} on {PLACES[place]}"


def find_metadata(path: Path) -> Path:
    """``path/metadata.csv``, or ``path/waterbird_complete95_forest2water2/metadata.csv``."""
    for candidate in (path / METADATA, path / RELEASE_DIR / METADATA):
        if candidate.is_file():
            return candidate
    raise DatasetNotFound(f"Waterbirds not found: no {path / METADATA}. " + DOWNLOAD.format(path=path))


def _split_code(ds: dict) -> str:
    split = str(ds.get("split", "test"))
    if split not in SPLITS:
        raise UsageError(f"waterbirds: dataset.split must be one of {', '.join(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _sample(row: dict[str, str], line: int, where: Path) -> Sample:
    try:
        y, place = int(row["y"]), int(row["place"])
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: line {line}: y and place must be 0 or 1 ({exc})") from exc
    if y not in (0, 1) or place not in (0, 1):
        raise UsageError(f"{where}: line {line}: y and place must be 0 or 1, got y={y} place={place}")
    name = row["img_filename"]
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise UsageError(f"{where}: line {line}: img_filename must be a relative path, got {name!r}")
    return Sample(name, y, {"group": group_name(y, place), "place": PLACES[place], "img_id": row["img_id"]})


def read_metadata(metadata: Path, split_code: str) -> list[Sample]:
    """The samples of one split, in file order; a missing column or a bad value raises UsageError."""
    rows = _rows(metadata)
    return [_sample(row, i + 2, metadata) for i, row in enumerate(rows) if str(row["split"]).strip() == split_code]


def _rows(metadata: Path) -> list[dict[str, str]]:
    rows = parse_csv(read_text_capped(metadata))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise UsageError(f"{metadata}: expected columns {', '.join(COLUMNS)}; missing {', '.join(missing) or 'rows'}")
    return rows


def training_group_sizes(metadata: Path) -> dict[str, float]:
    """Images per group in the training split (split 0): WILDS's ``adj_acc_avg`` weights (every group, 0 if absent)."""
    sizes = {group_name(y, place): 0.0 for y in (0, 1) for place in (0, 1)}
    for i, row in enumerate(_rows(metadata)):
        if str(row["split"]).strip() == SPLITS["train"]:
            sizes[str(_sample(row, i + 2, metadata).meta["group"])] += 1
    return sizes


def load_waterbirds(ds: dict, data_dir: Path) -> SampleSet:
    """The split's samples (labels 0 landbird / 1 waterbird, meta ``group``), images under metadata.csv's folder."""
    metadata = find_metadata(Path(ds["path"]))
    split = str(ds.get("split", "test"))
    samples = read_metadata(metadata, _split_code(ds))
    if not samples:
        raise DatasetNotFound(f"Waterbirds at {metadata.parent}: no rows of split {split!r} in {METADATA}")
    out = SampleSet(samples, list(BIRDS), metadata.parent, f"waterbirds {metadata.parent} [{split}]")
    out.group_weights = training_group_sizes(metadata)
    return out


def preflight_waterbirds(ds: dict, data_dir: Path) -> SampleSet:
    """metadata.csv parsed (no image decoded), and the split's first image must be there."""
    found = load_waterbirds(ds, data_dir)
    first = found.samples[0].id
    assert found.root is not None
    if not (found.root / first).is_file():
        raise DatasetNotFound(
            f"Waterbirds at {found.root}: metadata.csv lists {first} but the file is missing; unpack the whole "
            "release there"
        )
    return found
