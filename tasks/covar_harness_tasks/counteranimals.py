"""The ``counteranimals`` dataset format: the official CounterAnimal release (research/counteranimals.md 2, 7).

Layout: ``LAION-final/<ImageNet index> <WordNet synonyms>/{common-<bg>, counter-<bg>}/<photos>``, plus loose
files such as ``imagenet_names.txt`` (``idx<TAB>synonyms``). The root given may be ``LAION-final`` itself, its
parent, or any folder holding the class folders directly (third-party copies move them up).

Dataset keys (task YAML ``dataset:``):
  group: common | counter                  which half ("easy" / "hard")
  label_space: imagenet1k | counteranimals45  1000-way (official, label = ImageNet index) or the 45 classes only
                                           (label = position among them; NOT the paper's protocol)
  hf_id: ORG/NAME or a save_to_disk folder  load from Hugging Face instead (through harness.data.load_hf);
  hf_split, hf_image_key, hf_label_key, hf_group_key   its split and columns (the mirror's schema is unverified)

The loader returns the class names it used (the release's ``imagenet_names.txt`` when present, else the bundled
WordNet synonym list) and records which in the SampleSet description, which lands in the result file.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from PIL import ImageFile

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import read_text_capped
from covar_harness.data.imagenet import counteranimals_classes, imagenet_index, wordnet_names
from covar_harness.data.samples import DatasetNotFound, Sample, SampleSet, load_hf, preflight_hf

log = logging.getLogger(__name__)

CLASS_DIR = re.compile(r"^(\d+) (.+)$")
GROUPS = ("common", "counter")
LABEL_SPACES = ("imagenet1k", "counteranimals45")
RELEASE_DIR = "LAION-final"
NAMES_FILE = "imagenet_names.txt"
NOT_IMAGES = {".txt", ".py", ".json", ".csv", ".pkl", ".md", ".db", ".zip", ".tar", ".gz"}
DOWNLOAD = (
    "Download the release from https://drive.google.com/file/d/1SrPF0rgXKy_4z1kXsIYJt-2puM78LbAG/view "
    "(linked as 'Dataset' on https://counteranimal.github.io) and unpack it so that "
    "{path}/LAION-final/<index> <names>/common-*/ exists (or point --data-dir / dataset.path at it); "
    "or set dataset.hf_id to a Hugging Face copy (e.g. TMLR-Group-HF/counteranimal, schema unverified)"
)


class CounterAnimalsSampleSet(SampleSet):
    """Release photos; truncated JPEGs are decoded as far as they go, as the paper's reproduction did."""

    def open_image(self, index: int):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return super().open_image(index)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _class_dirs(folder: Path) -> list[tuple[int, str, Path]]:
    """(ImageNet index, folder name, path) of every ``<int> <name>`` sub-folder; anything else is skipped."""
    out = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = CLASS_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p.name, p))
    return out


def find_release_root(path: Path) -> Path:
    """The folder holding the class folders: ``path/LAION-final``, ``path`` itself, or one level further down."""
    if not path.is_dir():
        raise DatasetNotFound(f"CounterAnimals not found at {path}. " + DOWNLOAD.format(path=path))
    candidates = [path / RELEASE_DIR, path, *sorted(p / RELEASE_DIR for p in path.iterdir() if p.is_dir())]
    for candidate in candidates:
        if _class_dirs(candidate):
            return candidate
    raise DatasetNotFound(
        f"CounterAnimals not found at {path}: neither it nor {path / RELEASE_DIR} holds class folders named "
        f"'<ImageNet index> <names>'. " + DOWNLOAD.format(path=path)
    )


def group_dirs(class_dir: Path, group: str) -> list[Path]:
    """Sub-folders whose name starts with the group (case-insensitive); the release has exactly one."""
    return [p for p in sorted(class_dir.iterdir()) if p.is_dir() and p.name.lower().startswith(group)]


def background_of(folder_name: str, group: str) -> str:
    """``common-snow`` -> ``snow``: kept as metadata only, the vocabulary drifted between paper versions."""
    return folder_name[len(group) :].lstrip("-_ ")


def _photos(folder: Path) -> list[Path]:
    """Every plain file that is not obviously something else; unreadable ones are the evaluator's to count."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in NOT_IMAGES and p.name != "Thumbs.db"
    )


def scan_release(root: Path, group: str) -> list[Sample]:
    """One Sample per photo of ``group``; label = ImageNet index, id relative to ``root``."""
    samples = []
    for index, name, class_dir in _class_dirs(root):
        if not 0 <= index < 1000:
            raise UsageError(f"{class_dir}: {index} is not an ImageNet-1k class index (0..999)")
        found = group_dirs(class_dir, group)
        if len(found) != 1:
            log.warning("CounterAnimals %s: %d %r folder(s) in %s (expected 1)", group, len(found), group, class_dir)
        for sub in found:
            meta = {"group": group, "background": background_of(sub.name, group), "class_folder": name}
            samples += [Sample(str(f.relative_to(root)), index, dict(meta)) for f in _photos(sub)]
    return samples


def release_names(root: Path) -> tuple[list[str], str]:
    """The 1000 class names to prompt with, and where they came from.

    ``imagenet_names.txt`` (``idx<TAB>synonyms`` or one name per line) is used when it holds exactly the
    1000 classes; otherwise the bundled WordNet list, with a warning saying why.
    """
    for folder in (root, root.parent):
        f = folder / NAMES_FILE
        if f.is_file():
            names = _parse_names(f)
            if names is not None:
                return names, f"{f} (release imagenet_names.txt)"
            log.warning("CounterAnimals: %s is not a 1000-class list; using the bundled WordNet names", f)
            break
    return wordnet_names(), "bundled imagenet1k_wordnet (WordNet 3.0 synonym strings)"


def _parse_names(path: Path) -> list[str] | None:
    try:
        text = read_text_capped(path, 1 << 20, errors="replace")  # 1000 names: a few tens of kB
    except OSError:
        return None
    lines = [ln.rstrip("\r\n") for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1000:
        return None
    names: list[str | None] = [None] * 1000
    for position, line in enumerate(lines):
        head, sep, tail = line.partition("\t")
        if sep and head.strip().isdigit():
            index, name = int(head), tail.strip()
        else:
            index, name = position, line.split("\t")[-1].strip()
        if not 0 <= index < 1000 or names[index] is not None or not name:
            return None
        names[index] = name
    return names  # type: ignore[return-value]


def check_counts(samples: list[Sample], group: str, source: str) -> None:
    """Log per-class counts; warn (never fail) when the total differs from the paper's."""
    paper = {c["imagenet_index"]: c[f"paper_{group}_count"] for c in counteranimals_classes()}
    counts = Counter(s.label for s in samples)
    log.info(
        "CounterAnimals %s per-class image counts (%s): %s",
        group,
        source,
        ", ".join(f"{k}:{v}" for k, v in sorted(counts.items())),
    )
    expected = sum(paper.values())
    total = sum(counts.values())
    if total != expected:
        missing = sorted(set(paper) - set(counts))
        differ = [f"{k}: {counts[k]} vs {paper[k]}" for k in sorted(counts) if k in paper and counts[k] != paper[k]]
        log.warning(
            "CounterAnimals %s: %d images, the paper states %d (%d of 45 classes present%s; per-class differences: "
            "%s). Evaluating what is there.",
            group,
            total,
            expected,
            len(set(counts) & set(paper)),
            f", missing {missing[:10]}" if missing else "",
            "; ".join(differ[:10]) or "none",
        )


def restrict_45(samples: list[Sample], names: list[str]) -> tuple[list[Sample], list[str]]:
    """The unofficial 45-way label space: labels become positions among the 45 classes (ImageNet order)."""
    indices = sorted(c["imagenet_index"] for c in counteranimals_classes())
    position = {idx: i for i, idx in enumerate(indices)}
    outside = sorted({s.label for s in samples} - set(position))
    if outside:
        raise UsageError(f"CounterAnimals 45-way: classes {outside[:10]} are not among the 45 CounterAnimals classes")
    for s in samples:
        s.meta["imagenet_index"] = s.label
        s.label = position[s.label]
    return samples, [names[i] for i in indices]


def _options(ds: dict) -> tuple[str, str]:
    group = str(ds.get("group", "")).lower()
    if group not in GROUPS:
        raise UsageError(f"counteranimals format: dataset.group must be one of {', '.join(GROUPS)}, got {group!r}")
    space = ds.get("label_space", "imagenet1k")
    if space not in LABEL_SPACES:
        raise UsageError(f"counteranimals format: dataset.label_space must be one of {', '.join(LABEL_SPACES)}")
    return group, space


def load_counteranimals(ds_cfg: dict, data_dir: Path) -> SampleSet:
    """One CounterAnimals group, from the release folders or (``hf_id``) a Hugging Face copy."""
    group, space = _options(ds_cfg)
    if ds_cfg.get("hf_id"):
        samples, names, source, root, where = _from_hf(ds_cfg, group, data_dir)
        out: SampleSet = samples
    else:
        if not ds_cfg.get("path"):
            raise UsageError("counteranimals format: dataset.path (or dataset.hf_id) is required")
        root = find_release_root(Path(ds_cfg["path"]))
        names, source = release_names(root)
        out = CounterAnimalsSampleSet(scan_release(root, group), None, root)
        where = str(root)
    check_counts(out.samples, group, where)
    if space == "counteranimals45":
        out.samples, names = restrict_45(out.samples, names)
    out.classnames = names
    label_space = "1000-way ImageNet-1k" if space == "imagenet1k" else "45-way (UNOFFICIAL restriction)"
    out.description = f"counteranimals {where} [{group}], {label_space}, class names: {source}"
    return out


def preflight_counteranimals(ds_cfg: dict, data_dir: Path) -> None:
    """The options are valid and the release folder is found (a Hugging Face id is not contacted)."""
    _options(ds_cfg)
    if ds_cfg.get("hf_id"):
        hf_id = str(ds_cfg["hf_id"])
        return preflight_hf({"path": hf_id, "raw_path": hf_id}, data_dir)
    if not ds_cfg.get("path"):
        raise UsageError("counteranimals format: dataset.path (or dataset.hf_id) is required")
    find_release_root(Path(ds_cfg["path"]))
    return None


# ---- Hugging Face copy -----------------------------------------------------------------------------------
def _from_hf(ds: dict, group: str, data_dir: Path):
    """Through ``harness.data.load_hf``; labels mapped to ImageNet indices, rows filtered to ``group``."""

    hf_id = str(ds["hf_id"])
    split = ds.get("hf_split", "train")
    loaded = load_hf(
        {
            "path": hf_id,
            "raw_path": hf_id,
            "split": split,
            "image_key": ds.get("hf_image_key", "image"),
            "label_key": ds.get("hf_label_key", "label"),
        },
        data_dir,
    )
    keep = _hf_group_rows(loaded, ds, group, split)
    loaded = loaded.subset(keep)
    to_index = _hf_label_map(loaded.classnames, hf_id)
    for s in loaded.samples:
        s.meta["group"] = group
        s.label = to_index[s.label]
    return loaded, wordnet_names(), "bundled imagenet1k_wordnet (WordNet 3.0 synonym strings)", None, f"hf {hf_id}"


def _hf_group_rows(loaded, ds: dict, group: str, split: str) -> list[int]:
    """Rows of the group: by a group column (prefix match), or all rows when the split itself is the group."""
    if str(split).lower().startswith(group) and not ds.get("hf_group_key"):
        return list(range(len(loaded)))
    columns = loaded.dataset.column_names
    key = ds.get("hf_group_key") or next(
        (c for c in ("group", "setting", "subset", "type", "difficulty") if c in columns), None
    )
    if key is None or key not in columns:
        raise UsageError(
            f"Hugging Face copy {ds['hf_id']!r}: cannot tell common from counter; set dataset.hf_group_key "
            f"to the column that says so (columns: {', '.join(columns)}) or dataset.hf_split to a "
            f"split named after the group"
        )
    values = loaded.dataset[key]
    return [i for i, s in enumerate(loaded.samples) if str(values[int(s.id)]).lower().startswith(group)]


def _hf_label_map(classnames: list[str] | None, hf_id: str) -> dict[int, int]:
    """HF label -> ImageNet index: from a ``<index> <names>`` prefix, a bare index, or the class name."""
    if not classnames:
        raise UsageError(f"Hugging Face copy {hf_id!r}: its label column carries no class names to map")
    mapping, unknown = {}, []
    for i, name in enumerate(classnames):
        m = CLASS_DIR.match(name.strip())
        index = int(m.group(1)) if m else int(name) if name.strip().isdigit() else imagenet_index(name)
        if index is None or not 0 <= index < 1000:
            unknown.append(name)
        else:
            mapping[i] = index
    if unknown:
        raise UsageError(f"Hugging Face copy {hf_id!r}: labels not matched to ImageNet-1k classes: {unknown[:5]}")
    return mapping
