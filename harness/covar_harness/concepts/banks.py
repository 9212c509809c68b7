"""Concept banks (docs/design.md section 11): named sets of concepts, embedded by the model under study, that the
regions CCI finds are named against.

Two kinds, both embedded in the model's own space so a bank works for any model the harness runs:

- ``text``: concept words encoded by the model's text encoder with the task's templates, exactly as class names
  are (``text_cache.build_classifier``: per concept the mean of the normalised template embeddings). A text bank
  is a classifier over concepts, so it is cached on disk by model fingerprint with the class embeddings
  (``text_cache.TextEmbeddingStore``).
- ``images``: one folder per concept holding example images; a concept is the normalised mean of its images'
  normalised embeddings. For models whose text encoder knows no such words (the demo models know only their
  class names). One pass over the bank's images per model, cached in the same store under a key naming the
  bank's files (path, size, modification time of each).

A bank is given as ``text:FILE``, ``images:DIR`` or the name of a registered bank (hook
``register_concept_banks``). This module imports no torch at import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from covar_harness.catalog.plugin_manager import call_with_accepted, default_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import one_line, unsafe_name
from covar_harness.common.safe_files import read_text_capped
from covar_harness.data.pixels import open_image_file
from covar_harness.data.samples import IMAGE_EXTENSIONS
from covar_harness.pipeline.contract import Progress
from covar_harness.run.progress import Reporter
from covar_harness.run.text_cache import ClassifierCache

if TYPE_CHECKING:
    import torch

    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.run.text_cache import TextEmbeddingStore

SCHEMES = ("text", "images")
MAX_CONCEPTS = 5000  # one matmul column each; more is a vocabulary, not a bank
MAX_IMAGES_PER_CONCEPT = 512  # the mean of a few dozen examples is stable; a cap keeps one pass bounded
MAX_CONCEPT_CHARS = 200
IMAGE_BATCH = 64


@dataclass
class ConceptBank:
    """A set of concepts and how to embed them with a model. ``embed`` returns (D, C): one L2-normalised column per
    concept, in ``concepts`` order."""

    name: str
    concepts: list[str]
    source: str  # where the concepts come from: a file, a folder, a shipped vocabulary's citation
    kind: ClassVar[str] = ""  # "text" | "images"

    def describe(self) -> dict[str, Any]:
        """What the result records about the bank (``config.concepts.bank``)."""
        return {"name": self.name, "kind": self.kind, "n_concepts": len(self.concepts), "source": self.source}

    def embed(
        self, adapter: Any, templates: list[str], store: TextEmbeddingStore | None, reporter: Progress | None = None
    ) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class TextBank(ConceptBank):
    """Concept words, encoded by the model's text encoder with the task's templates (the class-name recipe)."""

    kind: ClassVar[str] = "text"

    def embed(
        self, adapter: Any, templates: list[str], store: TextEmbeddingStore | None, reporter: Progress | None = None
    ) -> torch.Tensor:
        return ClassifierCache(adapter, store).get(self.concepts, list(templates) or ["{}"], reporter or Reporter())


@dataclass
class ImageBank(ConceptBank):
    """One folder per concept under ``root``; ``prepare`` (optional) makes the folder first (a generated bank)."""

    kind: ClassVar[str] = "images"
    root: Path = Path(".")
    prepare: Callable[[], Path] | None = field(default=None, repr=False)
    files: dict[str, list[Path]] = field(default_factory=dict, repr=False)

    def folder(self) -> Path:
        """The bank's folder, generated on first use when the bank is a generated one, and its files listed."""
        if self.prepare is not None:
            self.root = self.prepare()
            self.prepare = None
        if not self.files:
            self.files = list_image_bank(self.root)
            self.concepts = list(self.files)
        return self.root

    def key(self) -> str:
        """What the embeddings depend on besides the model: every file's path, size and modification time."""
        digest = hashlib.sha256(b"covar-harness image bank v1")
        for concept, paths in self.files.items():
            for p in paths:
                st = p.stat()
                digest.update(f"\0{concept}\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return digest.hexdigest()

    def embed(
        self, adapter: Any, templates: list[str], store: TextEmbeddingStore | None, reporter: Progress | None = None
    ) -> torch.Tensor:
        """Templates do not apply to images; the store caches the result under the bank's file key."""
        self.folder()
        cache_key = [f"image bank {self.key()}"]  # the store's "templates" slot: a key no template list can equal
        cached = store.load(self.concepts, cache_key) if store is not None else None
        if cached is not None:
            return cached
        bank = embed_image_folders(adapter, self.files, reporter)
        if store is not None:
            store.save(self.concepts, cache_key, bank)
        return bank


def embed_image_folders(adapter: Any, files: dict[str, list[Path]], reporter: Progress | None = None) -> torch.Tensor:
    """(D, C): per concept the normalised mean of its images' normalised embeddings (CLIP's prompt-ensemble recipe,
    with images in place of prompts). An unreadable image is a one-line error naming it: a bank is the user's
    curated data, silently dropping part of a concept would change what it means."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch
    import torch.nn.functional as F  # lazy: ls / --help / plugin discovery import this module without torch

    items = [(c, p) for c, paths in files.items() for p in paths]
    handle = reporter.task("embedding the concept bank", len(items)) if reporter else None
    sums: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(items), IMAGE_BATCH):
            part = items[start : start + IMAGE_BATCH]
            pixels = []
            for _, path in part:
                try:
                    pixels.append(adapter.preprocess(open_image_file(path)))
                except Exception as exc:  # one bad file: one line naming it, exit 2
                    raise UsageError(f"concept bank image {one_line(path)!r} cannot be read: {one_line(exc)}") from exc
            emb = F.normalize(adapter.encode_images(torch.stack(pixels)).float().cpu(), dim=-1)
            for (concept, _), row in zip(part, emb):
                sums[concept] = sums[concept] + row if concept in sums else row.clone()
            if reporter:
                reporter.advance(handle, len(part))
    if reporter:
        reporter.done(handle)
    return F.normalize(torch.stack([sums[c] for c in files]), dim=-1).T.contiguous()


# ---- reading banks ---------------------------------------------------------------------------------------------
def check_concepts(concepts: list[str], where: str) -> list[str]:
    """Names a bank may hold: at least two, distinct, short, printable (they go into result files and pages)."""
    if len(concepts) < 2:
        raise UsageError(f"concept bank {where} needs at least two concepts, found {len(concepts)}")
    if len(concepts) > MAX_CONCEPTS:
        raise UsageError(f"concept bank {where} has {len(concepts)} concepts; at most {MAX_CONCEPTS}")
    seen: set[str] = set()
    for c in concepts:
        if unsafe_name(c) or len(c) > MAX_CONCEPT_CHARS:
            raise UsageError(f"concept bank {where}: unusable concept name {one_line(c)[:60]!r}")
        if c in seen:
            raise UsageError(f"concept bank {where} lists {c!r} twice")
        seen.add(c)
    return concepts


def read_vocabulary(path: Path) -> tuple[list[str], str]:
    """(concepts, source) of a text bank file: one concept per line, ``#`` starts a comment, blank lines skipped;
    a ``# source: ...`` line names where the words come from."""
    try:
        text = read_text_capped(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read concept file {one_line(path)!r}: {one_line(exc)}") from None
    concepts, sources = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.lower().startswith("# source:"):
            sources.append(stripped.split(":", 1)[1].strip())
        elif stripped and not stripped.startswith("#"):
            concepts.append(" ".join(stripped.split()))
    return check_concepts(concepts, repr(str(path))), "; ".join(sources) or str(path)


def list_image_bank(root: Path) -> dict[str, list[Path]]:
    """{concept: image files} of an ``images:`` bank: one sub-folder per concept (its name, ``_`` read as a space,
    as the ``imagefolder`` format reads class folders), each with at least one image."""
    if not root.is_dir():
        raise UsageError(f"concept bank folder {one_line(root)!r} does not exist or is not a folder")
    files: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not images:
            raise UsageError(f"concept folder {one_line(sub)!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        files[sub.name.replace("_", " ")] = images[:MAX_IMAGES_PER_CONCEPT]
    check_concepts(list(files), repr(str(root)))
    return files


def resolve_bank(spec: str, catalog: Catalog | None = None, data_dir: Path | None = None) -> ConceptBank:
    """The bank of ``--concepts SPEC``: ``text:FILE``, ``images:DIR`` or a registered name (its factory gets
    ``data_dir`` when it accepts it). Cheap (no image read, nothing generated), so the CLI calls it before any
    model loads; a bad spec is one line, exit 2."""
    scheme, _, rest = spec.partition(":")
    if scheme == "text" and rest:
        concepts, source = read_vocabulary(Path(rest).expanduser())
        return TextBank(spec, concepts=concepts, source=source)
    if scheme == "images" and rest:
        root = Path(rest).expanduser()
        files = list_image_bank(root)
        return ImageBank(spec, concepts=list(files), source=str(root), root=root, files=files)
    if catalog is None:
        catalog = default_catalog()
    bank = call_with_accepted(catalog.concepts.get(spec), data_dir=data_dir)
    if not isinstance(bank, ConceptBank):
        raise UsageError(f"concept bank {spec!r} registered by a plugin is not a ConceptBank")
    return bank
