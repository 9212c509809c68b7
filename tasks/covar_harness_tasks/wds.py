"""The ``wds`` format: CLIP_benchmark's webdataset layout, so its hosted VTAB+ sets load unchanged.

Layout (``clip_benchmark/datasets/builder.py``, ``build_wds_dataset``; the sets on the Hugging Face Hub under
``clip-benchmark/wds_*``)::

    <root>/classnames.txt                          one class name per line (label i = line i)
    <root>/zeroshot_classification_templates.txt   one prompt template per line, ``{c}`` for the class name
    <root>/dataset_type.txt                        optional; only zero-shot classification is read here
    <root>/<split>/nshards.txt                     the number of shards n
    <root>/<split>/0.tar ... <n-1>.tar             samples: <key>.cls (the label, ASCII) + <key>.webp|png|jpg|jpeg

Shards are read with the standard library's ``tarfile`` (no webdataset dependency): at load time only the tar
headers and the tiny ``.cls`` members are read, and each image is found later, in DataLoader workers, by its
offset in its shard. Only regular members under a size cap count; a sample whose image or label is missing,
unreadable or too large is kept as a failing sample, so the evaluator skips and counts it (``task.n_failed``,
``failed_files``) exactly like a corrupt image file.

Class names and templates are read as CLIP_benchmark reads them (``builder.py`` ``build_wds_dataset``): every line,
stripped, so a blank line inside ``classnames.txt`` is an (empty) class and the labels after it keep their line
numbers. A task takes the root's templates with ``templates: dataset`` and, as CLIP_benchmark does for every
webdataset, also when it names no ``templates:``; a root without ``zeroshot_classification_templates.txt`` (which
CLIP_benchmark refuses) then falls back to ``simple``, and the result's notes say so.

Shards are untrusted input, bounded before anything is read: ``tarfile`` reads an extended (pax or GNU long-name)
header's payload whole, so the shard is read through :class:`_Bounded`, which never hands out more than the bytes
left in the file (a header claiming 2^62 bytes gets the few that exist, and the shard is counted as unreadable
from there); a shard holds at most ``MAX_MEMBERS`` members; ``nshards.txt`` is an ASCII decimal no larger than the
number of ``.tar`` files present.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from PIL import Image

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import open_regular, read_text_capped
from covar_harness.data.pixels import as_rgb
from covar_harness.data.samples import DatasetNotFound, Sample, SampleSet

if TYPE_CHECKING:
    from PIL import Image

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order of preference
IMAGE_MAX_BYTES = 64 << 20
CLS_MAX_BYTES = 32
SHARD_MAX_BYTES = 1 << 40  # a sanity bound on a shard file, not a memory bound: shards are never read whole
MAX_MEMBERS = 1 << 20  # members per shard (CLIP_benchmark's shards hold a few thousand)
LABEL = re.compile(r"^\s*[0-9]{1,9}\s*$")  # ASCII digits only: "²" or "٣" is no label
DECIMAL = re.compile(r"[0-9]{1,9}")
WHERE = (
    "download a CLIP_benchmark webdataset (e.g. huggingface.co/datasets/clip-benchmark/wds_vtab-cifar10) into the "
    "data dir, or set --data-dir / dataset.path"
)


@dataclass(frozen=True)
class Member:
    """Where a sample's image lies: its shard (relative to the root), byte offset and size; or why it fails."""

    shard: str
    offset: int = 0
    size: int = 0
    error: str = ""


class WdsSampleSet(SampleSet):
    """Samples inside tar shards: an image is read from its shard by offset (picklable: only offsets are held)."""

    members: list[Member]
    templates: list[str] | None = None

    def open_image(self, index: int) -> Image.Image:
        member = self.members[index]
        if member.error:
            raise ValueError(member.error)
        assert self.root is not None
        with open_regular(self.root / member.shard, SHARD_MAX_BYTES) as fh:
            fh.seek(member.offset)
            data = fh.read(member.size)
        if len(data) != member.size:
            raise ValueError(f"{member.shard} is truncated at byte {member.offset}")
        with Image.open(io.BytesIO(data)) as im:
            return as_rgb(im)

    def subset(self, indices: list[int]) -> SampleSet:
        out = super().subset(indices)
        assert isinstance(out, WdsSampleSet)
        out.members = [self.members[i] for i in indices]
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s, m in zip(self.samples, self.members):
            h.update(f"{s.id}\t{s.label}\t{m.size}\t{m.error}\n".encode())
        return "sha256:" + h.hexdigest()[:16]


def _lines(path: Path, keep_blank: bool = False) -> list[str] | None:
    """The stripped lines of a small text file (blank ones too with ``keep_blank``, as CLIP_benchmark reads
    ``classnames.txt`` and the templates), or None when it is not there."""
    if not path.exists():
        return None
    try:
        return [line.strip() for line in read_text_capped(path).splitlines() if keep_blank or line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"wds: cannot read {path}: {exc}") from None


def _blank_notes(root: Path, classnames: list[str], templates: list[str] | None) -> list[str]:
    """What the result should say about blank lines and a missing templates file (kept as CLIP_benchmark keeps them)."""
    notes = []
    blank = [i for i, name in enumerate(classnames) if not name]
    if blank:
        notes.append(
            f"{root / 'classnames.txt'}: {len(blank)} blank line(s) kept as empty class names, as CLIP_benchmark "
            f"keeps them (first: label {blank[0]}); the labels after them keep their line numbers"
        )
    if templates is None:
        notes.append(
            f"{root} has no zeroshot_classification_templates.txt (CLIP_benchmark refuses such a set); a task "
            "without templates: uses 'simple'"
        )
    elif any(not t for t in templates):
        notes.append(f"{root / 'zeroshot_classification_templates.txt'}: blank lines kept as empty prompts")
    return notes


def shard_paths(root: Path, split: str) -> list[Path]:
    """``<split>/0.tar ... <n-1>.tar`` per ``nshards.txt``; without it, the ``*.tar`` files in numeric order."""
    folder = root / split
    if not folder.is_dir():
        raise DatasetNotFound(
            f"webdataset split not found: {folder} (expected {folder}/nshards.txt and 0.tar ...; {WHERE})"
        )
    count = _lines(folder / "nshards.txt")
    found = [p for p in folder.glob("*.tar") if p.is_file()]
    if count is None:
        shards = sorted(found, key=lambda p: (not _decimal(p.stem), int(p.stem) if _decimal(p.stem) else 0, p.name))
    elif len(count) != 1 or not _decimal(count[0]):
        raise UsageError(f"wds: {folder / 'nshards.txt'} must hold one number (ASCII digits), the shard count")
    elif int(count[0]) > len(found):  # checked before any path is built: "9999999999" must not spin
        first = next(i for i in range(len(found) + 1) if not (folder / f"{i}.tar").is_file())
        raise DatasetNotFound(
            f"webdataset shard {folder / f'{first}.tar'} not found: nshards.txt names {int(count[0])} shards, "
            f"{len(found)} .tar file(s) are there"
        )
    else:
        shards = [folder / f"{i}.tar" for i in range(int(count[0]))]
        absent = [p for p in shards if not p.is_file()]
        if absent:
            raise DatasetNotFound(f"webdataset shard {absent[0]} not found ({len(absent)} of {len(shards)} missing)")
    if not shards:
        raise DatasetNotFound(f"webdataset split {folder} has no .tar shards; {WHERE}")
    return shards


def _decimal(text: str) -> bool:
    return DECIMAL.fullmatch(text) is not None


class _Bounded(io.RawIOBase):
    """A shard file whose ``read(n)`` never asks for more than the bytes left in it: ``tarfile`` allocates what
    a header claims, so a forged size becomes a short read (a broken shard), not a 2^62-byte allocation."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self.fh, self.size = fh, size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        left = max(self.size - self.fh.tell(), 0)
        return self.fh.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's grouping: the key is the member path up to the first dot of its base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _read_label(tar: tarfile.TarFile, info: tarfile.TarInfo) -> int | str:
    """The ``.cls`` label, or why it cannot be read."""
    if not info.isfile() or info.size > CLS_MAX_BYTES:
        return f"label member {info.name} is not a small regular file"
    fh = tar.extractfile(info)
    text = fh.read(CLS_MAX_BYTES).decode("ascii", "replace") if fh is not None else ""
    return int(text) if LABEL.match(text) else f"label member {info.name} is not an integer: {text[:20]!r}"


def read_shard(path: Path, rel: str) -> list[tuple[str, int | str, Member]]:
    """(key, label or error, image member) per sample key in one shard, in shard order."""
    keys: dict[str, dict[str, tarfile.TarInfo]] = {}
    labels: dict[str, int | str] = {}
    truncated = ""
    with open_regular(path, SHARD_MAX_BYTES) as fh:
        try:
            bounded = _Bounded(fh, os.fstat(fh.fileno()).st_size)
            with tarfile.open(fileobj=bounded, mode="r:") as tar:
                for n, info in enumerate(tar):
                    if n >= MAX_MEMBERS:
                        raise tarfile.TarError(f"more than {MAX_MEMBERS} members")
                    key, ext = _split_key(info.name)
                    keys.setdefault(key, {})[ext] = info
                    if ext == "cls":
                        labels[key] = _read_label(tar, info)
        # one failing entry stands for the unreadable rest; MemoryError / OverflowError: a forged size field
        except (tarfile.TarError, EOFError, OSError, ValueError, MemoryError, OverflowError) as exc:
            truncated = f"{rel} is not a readable tar after {len(keys)} keys ({type(exc).__name__}: {exc})"[:300]
    out = [
        (key, labels.get(key, f"sample {key} has no .cls label"), _image(rel, key, exts)) for key, exts in keys.items()
    ]
    if truncated:
        out.append((f"<rest of {rel}>", truncated, Member(rel, error=truncated)))
    return out


def _image(rel: str, key: str, exts: dict[str, tarfile.TarInfo]) -> Member:
    info = next((exts[e] for e in IMAGE_KEYS if e in exts), None)
    if info is None:
        return Member(rel, error=f"sample {key} has no .webp/.png/.jpg/.jpeg image")
    if not info.isfile() or info.size > IMAGE_MAX_BYTES:
        return Member(rel, error=f"image member {info.name} is not a regular file under {IMAGE_MAX_BYTES} bytes")
    return Member(rel, info.offset_data, info.size)


def load_wds(ds: dict, data_dir: Path) -> WdsSampleSet:
    """Every sample of ``<root>/<split>/*.tar``, labelled by its ``.cls``, named by ``classnames.txt``."""
    root = Path(ds["path"])
    if not root.is_dir():
        raise DatasetNotFound(
            f"webdataset not found: {root} (expected {root}/classnames.txt and {root}/<split>/; {WHERE})"
        )
    kind = _lines(root / "dataset_type.txt")
    if kind and kind[0].lower() not in ("classification", "zeroshot_classification"):
        raise UsageError(f"wds: {root} is a {kind[0]!r} dataset; only zero-shot classification sets are evaluated")
    classnames = _lines(root / "classnames.txt", keep_blank=True)
    if not classnames:
        raise DatasetNotFound(f"webdataset {root} has no classnames.txt (one class name per line); {WHERE}")
    split = str(ds.get("split", "test"))
    samples, members = [], []
    for shard in shard_paths(root, split):
        rel = shard.relative_to(root).as_posix()
        for key, label, member in read_shard(shard, rel):
            if isinstance(label, str) or not 0 <= label < len(classnames):
                why = label if isinstance(label, str) else f"sample {key} label {label} is outside the class names"
                member, label = Member(rel, error=member.error or why), 0  # kept so the evaluator counts it
            samples.append(Sample(f"{rel}/{key}", label))
            members.append(member)
    out = WdsSampleSet(samples, classnames, root, f"wds {root} [{split}] ({len(members)} samples in tar shards)")
    out.members = members
    out.templates = _lines(root / "zeroshot_classification_templates.txt", keep_blank=True)
    out.notes += _blank_notes(root, classnames, out.templates)
    return out


def preflight_wds(ds: dict, data_dir: Path) -> SampleSet:
    """Reading tar headers is cheap next to decoding the images: the loader itself is the check."""
    return load_wds(ds, data_dir)
