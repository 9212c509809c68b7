"""Class-text embeddings: built once per (class names, templates) in memory, and once per model on disk.

:class:`ClassifierCache` holds the classifiers of the model currently loaded. With a :class:`TextEmbeddingStore`
(``run --text-cache DIR``, default ``$COVAR_HARNESS_TEXT_CACHE`` or ``~/.cache/covar-harness/text-embeddings``;
``none`` turns it off) a classifier also goes to disk, keyed by (model fingerprint, class names, templates,
precision), and later runs, shards and processes read it instead of encoding the prompts again: the 1000-class x
80-template classifier costs 80,000 text forwards once per model, not once per run.

Files are written to a temporary file beside the target and renamed into place (``safe_files.atomic_write``), so
concurrent writers of the same key leave one complete file; a reader opens regular files only (a FIFO in the
place is a miss, not a hang), checks the magic line, the header's key (before reading on), dtype, shape against
the bytes the file holds (a corrupt size field allocates nothing) and the payload's SHA-256, and treats anything
else (a partial, corrupt or foreign file) as a miss: said once, the classifier is built and the file replaced.
The stored tensor is the float32 classifier itself, so a hit gives the same bits as building it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covar_harness.common.safe_files import atomic_write, open_regular, parse_json
from covar_harness.data.resources import format_prompt
from covar_harness.models.adapter import check_finite

if TYPE_CHECKING:
    import torch

    from covar_harness.models.adapter import ModelAdapter
    from covar_harness.pipeline.contract import Progress

log = logging.getLogger(__name__)
TEXT_BATCH = 256
TEXT_CACHE_ENV = "COVAR_HARNESS_TEXT_CACHE"
DEFAULT_TEXT_CACHE = "~/.cache/covar-harness/text-embeddings"
MAGIC = b"covar-harness text embeddings v1\n"
MAX_HEADER = 4096
SAMPLE_VALUES = 64  # values read from each weight tensor for the fingerprint


def default_text_cache(flag: str | None) -> Path | None:
    """The folder of ``--text-cache``: the flag, else ``$COVAR_HARNESS_TEXT_CACHE``, else the user cache; ``none``
    (either place): no persistent cache."""
    value = flag if flag is not None else os.environ.get(TEXT_CACHE_ENV) or DEFAULT_TEXT_CACHE
    if value.strip().lower() in ("none", "off", ""):
        return None
    return Path(value).expanduser()


def build_classifier(adapter, classnames: list[str], templates: list[str], reporter: Progress | None = None):
    """(D, C): per class, the mean of the L2-normalised template embeddings, renormalised (CLIP's recipe)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch
    import torch.nn.functional as F  # lazy: ls / --help / plugin discovery import this module without torch

    prompts = [format_prompt(t, c) for c in classnames for t in templates]
    handle = reporter.task("encoding class prompts", len(prompts)) if reporter else None
    chunks = []
    for start in range(0, len(prompts), TEXT_BATCH):
        part = prompts[start : start + TEXT_BATCH]
        raw = adapter.encode_texts(part)
        check_finite(adapter, "encode_texts", raw, part.__getitem__, "prompt")
        chunks.append(F.normalize(raw.float().cpu(), dim=-1))
        if reporter:
            reporter.advance(handle, len(part))
    if reporter:
        reporter.done(handle)
    emb = torch.cat(chunks).view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).T.contiguous()


class ClassifierCache:
    """Class embeddings per (class names, templates), for the model currently loaded; with ``store``, also read
    from and written to the persistent cache."""

    def __init__(self, adapter: ModelAdapter, store: TextEmbeddingStore | None = None):
        self.adapter, self.store = adapter, store
        self._cache: dict[tuple, torch.Tensor] = {}

    def get(self, classnames: list[str], templates: list[str], reporter: Progress) -> torch.Tensor:
        key = (tuple(classnames), tuple(templates))
        if key not in self._cache:
            W = self.store.load(classnames, templates) if self.store is not None else None
            if W is None:
                W = build_classifier(self.adapter, classnames, templates, reporter)
                if self.store is not None:
                    self.store.save(classnames, templates, W)
            self._cache[key] = W
        return self._cache[key]


def model_fingerprint(spec: str, adapter: Any) -> str | None:
    """What identifies the weights of a loaded model: its spec, adapter class, and per weight tensor its name,
    dtype, shape, the float64 sum and absolute sum, and 64 evenly spaced values; None when the adapter holds no
    ``torch.nn.Module`` (then nothing is cached on disk).

    Why this and not the spec or a weight file's size/mtime: the same spec can name other weights (a local folder
    retrained in place, ``hf:`` revisions, plugin loaders with no file at all), and file metadata says nothing
    about weights built in memory. Reading the loaded tensors covers every loader. Hashing every byte would cost
    seconds for billion-parameter models; the sums change with any single edited value (short of exact
    cancellation) and the sampled values with any retraining, at the cost of two reductions per tensor. The sums
    are taken where the weights are: another device may round them differently, which costs a miss, never a
    wrong hit.
    """
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    members = vars(adapter).items() if hasattr(adapter, "__dict__") else ()
    modules = sorted((name, value) for name, value in members if isinstance(value, torch.nn.Module))
    if not modules:
        return None
    digest = hashlib.sha256(f"{spec}\0{type(adapter).__module__}.{type(adapter).__qualname__}".encode())
    with torch.no_grad():
        for attr, module in modules:
            for name, tensor in module.state_dict().items():
                digest.update(f"\0{attr}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                if tensor.numel() == 0 or tensor.is_complex():
                    continue
                flat = tensor.detach().reshape(-1)
                step = max(1, flat.numel() // SAMPLE_VALUES)
                sample = flat[::step][:SAMPLE_VALUES].double().cpu()
                values = flat if flat.is_floating_point() else flat.double()
                total = torch.sum(values, dtype=torch.float64)  # reductions: no full-size copy of a weight
                sums = torch.stack([total, torch.linalg.vector_norm(values, 1, dtype=torch.float64)]).cpu()
                digest.update(sample.numpy().tobytes() + sums.numpy().tobytes())
    return digest.hexdigest()


class TextEmbeddingStore:
    """Classifiers of one model (``fingerprint``) at one precision, as files under ``root``."""

    def __init__(self, root: Path, fingerprint: str, precision: str):
        self.root, self.fingerprint, self.precision = Path(root), fingerprint, precision

    def key(self, classnames: list[str], templates: list[str]) -> str:
        what = [MAGIC.decode().strip(), self.fingerprint, self.precision, TEXT_BATCH, classnames, templates]
        return hashlib.sha256(json.dumps(what, ensure_ascii=True).encode()).hexdigest()

    def path(self, classnames: list[str], templates: list[str]) -> Path:
        key = self.key(classnames, templates)
        return self.root / key[:2] / f"{key}.emb"

    def load(self, classnames: list[str], templates: list[str]) -> torch.Tensor | None:
        """The stored classifier, or None: no file, or one that is not a regular file, partial, corrupt or for
        another key (said once, as a warning; the classifier is then built and the file replaced)."""
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        path, key = self.path(classnames, templates), self.key(classnames, templates)
        try:
            payload, (d, c) = _read_entry(path, key, len(classnames))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, RecursionError, MemoryError, OverflowError) as exc:
            log.warning("ignoring text-embedding cache file %s: %s", path, exc)
            return None
        return torch.from_numpy(np.frombuffer(payload, dtype="<f4").reshape(d, c).copy())

    def save(self, classnames: list[str], templates: list[str], W: torch.Tensor) -> None:
        """Write atomically; a cache that cannot be written costs a warning, never the pair."""

        payload = W.detach().float().cpu().contiguous().numpy().astype("<f4").tobytes()
        header = {
            "key": self.key(classnames, templates),
            "shape": list(W.shape),
            "dtype": "float32",
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        head = MAGIC + json.dumps(header).encode() + b"\n"
        try:
            atomic_write(self.path(classnames, templates), lambda fh: fh.write(head + payload), binary=True)
        except OSError as exc:
            log.warning("could not write the text-embedding cache under %s: %s", self.root, exc)


def _read_entry(path: Path, key: str, n_classes: int) -> tuple[bytes, tuple[int, int]]:
    """The payload and shape of the cache file at ``path`` for ``key``; ValueError for anything else.

    The header is checked before the payload is read: the key first (a foreign file is never read on), then
    the payload size against the bytes the file holds, so a size field of 2^40 costs nothing."""
    with open_regular(path) as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a text-embedding file")
        header = parse_json(fh.readline(MAX_HEADER), str(path))
        if not isinstance(header, dict) or header.get("key") != key or header.get("dtype") != "float32":
            raise ValueError("header does not match")
        d, c = (int(x) for x in header["shape"])
        left = os.fstat(fh.fileno()).st_size - fh.tell()
        if c != n_classes or d < 1 or d * c * 4 != left:
            raise ValueError("payload size does not match its header (partial or corrupt file)")
        payload = fh.read(left)
    if len(payload) != left or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("payload checksum does not match (partial or corrupt file)")
    return payload, (d, c)


def store_for(spec: str, adapter: Any, root: Path | None, precision: str) -> TextEmbeddingStore | None:
    """The persistent store of one loaded model, or None (no cache folder, or weights it cannot fingerprint)."""
    if root is None:
        return None
    fingerprint = model_fingerprint(spec, adapter)
    return None if fingerprint is None else TextEmbeddingStore(root, fingerprint, precision)
