"""One model x task: every method's importance maps, curves and localisation, per sample.

Data, class names, templates and class embeddings come from the evaluator's own helpers (``open_task_data``,
``limit_samples``, ``task_classnames``, ``ClassifierCache``), images from its DataLoader (``iterate_batches``),
masks through the diagnosis's mapping onto the model's patch grid (``mask_patch_fractions``).

A retrieval task (``retrieval.is_retrieval_task``) is mapped onto the same machinery: one "class" per image, whose
text is the image's caption set, so attribution explains the paired caption (``_retrieval_pair``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from covar_harness.attribution.base import find_attributor
from covar_harness.attribution.engine import sample_seed
from covar_harness.attribution.patches import importance_order
from covar_harness.catalog.taskconfig import TASK_KIND
from covar_harness.common.console import one_line
from covar_harness.data.samples import open_task_data
from covar_harness.data.task_inputs import limit_samples, task_classnames, task_templates
from covar_harness.faithfulness.curves import Scorer
from covar_harness.faithfulness.importance import importance_maps
from covar_harness.faithfulness.localisation import pointing_energy, relevance_rank_accuracy
from covar_harness.faithfulness.protocols import PROTOCOLS, CurveInput
from covar_harness.faithfulness.settings import FaithfulnessSettings
from covar_harness.masks.geometry import mask_patch_fractions
from covar_harness.models.adapter import attribution_support, logit_scale, patch_grid
from covar_harness.run.batches import iterate_batches
from covar_harness.run.progress import Reporter
from covar_harness.run.retrieval import PAIRED_TEXT, is_retrieval_task, paired_caption_classifier, self_labelled

if TYPE_CHECKING:
    import torch

    from covar_harness.attribution.base import Attributor
    from covar_harness.attribution.settings import CCISettings
    from covar_harness.data.samples import SampleSet


@dataclass
class PairData:
    """What the pass over one task needs: its samples (``--limit`` applied) and class embeddings (D, C)."""

    samples: SampleSet
    classnames: list[str]
    classifier: torch.Tensor
    n_failed: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. why the token-removal curves were not run
    settings: dict[str, Any] = field(default_factory=dict)  # recorded with the curve settings (retrieval's text)


@dataclass
class MethodRun:
    """Per-sample rows of one method on one pair (or why it could not run)."""

    method: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    x: dict[str, list[float]] = field(default_factory=dict)  # curve name -> fractions of patches at each point


def open_pair_data(adapter: Any, cfg: Any, catalog: Any, classifiers: Any, limit: int | None, seed: int, data_dir):
    """The pair's samples and class embeddings through the evaluator's helpers (a retrieval task's: its images'
    caption sets)."""

    samples = limit_samples(open_task_data(cfg, catalog, data_dir), limit, seed)
    if is_retrieval_task(cfg, catalog):
        return _retrieval_pair(adapter, samples)
    if samples.class_map is not None:  # scores are max-logit buckets there: no one linear classifier to perturb
        raise ValueError(
            f"task {cfg.task!r} maps a {len(samples.class_map.classnames)}-way classifier onto its labels; the "
            "faithfulness curves need a classifier over the task's own classes (for ImageNet-9: imagenet9-9way/*)"
        )
    classnames = task_classnames(cfg, samples)
    W = classifiers.get(classnames, task_templates(cfg, samples), Reporter())
    return PairData(samples, classnames, W)


# what a retrieval pair's result records in ``settings``: the explained text of image i is its caption set
RETRIEVAL_SETTINGS = {"task_kind": TASK_KIND, "explained_text": PAIRED_TEXT}


def _retrieval_pair(adapter: Any, samples: Any) -> PairData:
    """A retrieval pair as a classification pair: class i is image i's caption set (the normalised mean of its
    captions' embeddings, ``retrieval.paired_caption_classifier``) and image i's label is i. So ``--target label``
    explains the paired caption, ``--target pred`` the best-matching caption set among the pair's images (the
    image -> text top 1), and ``--score softmax`` is the softmax over the pair's caption sets (the retrieval
    softmax over ``--limit`` images when given); ``--score cosine`` is the image-text similarity itself."""

    if not hasattr(samples, "captions"):
        raise ValueError(f"{samples.description or 'this dataset'}: a retrieval task without captions")
    own = self_labelled(samples)
    W = paired_caption_classifier(adapter, own, Reporter())
    return PairData(own, [s.id for s in own.samples], W, settings=dict(RETRIEVAL_SETTINGS))


def patch_masks(adapter: Any, samples: SampleSet, indices: Sequence[int]) -> list[np.ndarray | None]:
    """Each sample's foreground fraction per patch (raster order) in the model-input frame, None without a mask."""

    out: list[np.ndarray | None] = []
    for i in indices:
        mask = samples.open_mask(i)
        grid = patch_grid(adapter)
        out.append(None if mask is None else mask_patch_fractions(adapter.preprocess, mask, grid).ravel())
    return out


def run_pair(
    adapter: Any,
    data: PairData,
    methods: Sequence[str | type[Attributor]],
    settings: FaithfulnessSettings,
    cci: CCISettings,
    batch_size: int = 16,
) -> dict[str, MethodRun]:
    """Every method (a name, or an Attributor class such as RISE with its settings) over every sample of the
    pair, batch by batch (one pass over the images); keyed by method name."""

    classes = {find_attributor(m).name: find_attributor(m) for m in methods}
    runs = {name: MethodRun(name) for name in classes}
    removal, why = attribution_support(adapter)
    if settings.token_removal and not removal:
        data.notes.append(f"no token-removal curves: {why}")
    for indices, pixels, failed in iterate_batches(data.samples, adapter.preprocess, batch_size, 0):
        data.n_failed += len(failed)
        if pixels is None:
            continue
        batch = _Batch.make(adapter, data, list(indices), pixels, settings, cci)
        for method, run in runs.items():
            if run.error:
                continue
            try:
                run.rows += batch.rows(classes[method], run.x)
            except Exception as exc:  # noqa: BLE001 - a method that cannot explain this model is reported, not fatal
                run.error = f"{type(exc).__name__}: {one_line(exc)}"
                run.rows = []  # no partial summary: the method failed on this pair
    return runs


def softmax_temperature(adapter: Any, settings: FaithfulnessSettings) -> tuple[float, str]:
    """(T, where it comes from) of the softmax score: ``--temperature`` when given, else the model's own logit
    scale (``models.adapter.logit_scale``; 100 with a note when the model exposes none). Recorded per result in
    ``settings.temperature`` / ``settings.temperature_from``."""
    if settings.temperature is not None:
        return settings.temperature, "--temperature"
    return logit_scale(adapter)


@dataclass
class _Batch:
    adapter: Any
    data: PairData
    indices: list[int]
    pixels: torch.Tensor
    emb: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    scorer: Scorer
    fg: list[np.ndarray | None]
    settings: FaithfulnessSettings
    cci: CCISettings

    @classmethod
    def make(cls, adapter, data, indices, pixels, settings, cci) -> _Batch:
        with torch.no_grad():
            emb = F.normalize(adapter.encode_images(pixels).float().cpu(), dim=-1)
        labels = torch.tensor([data.samples.samples[i].label for i in indices])
        target = (emb @ data.classifier).argmax(dim=-1) if settings.target == "pred" else labels
        scorer = Scorer(data.classifier, target, settings.score, softmax_temperature(adapter, settings)[0])
        fg = patch_masks(adapter, data.samples, indices)
        return cls(adapter, data, indices, pixels, emb, target, labels, scorer, fg, settings, cci)

    def rows(self, method: str | type[Attributor], x: dict[str, list[float]]) -> list[dict[str, Any]]:
        samples = self.data.samples.samples
        seeds = [sample_seed(self.cci.seed, samples[i].id) for i in self.indices]
        text = self.data.classifier[:, self.target].T.contiguous()
        with torch.no_grad():
            maps = importance_maps(method, self.adapter, self.pixels, self.emb, text, self.target, seeds, self.cci)
        random_ties = self.settings.ties == "random"
        order = importance_order(maps, seeds if random_ties else None)
        s = self.settings
        inp = CurveInput(self.adapter, self.pixels, maps, order, seeds, random_ties, self.scorer, s.steps,
                         s.replacement, s.blur_sigma, s.token_removal)  # fmt: skip
        curves = PROTOCOLS[s.protocol]().curves(inp)
        for suffix, c in curves.items():
            x[f"deletion{suffix}"], x[f"insertion{suffix}"] = c.x_deletion.tolist(), c.x_insertion.tolist()
        return [self._row(b, maps[b].numpy(), order[b].numpy(), curves) for b in range(len(self.indices))]

    def _row(self, b: int, imp: np.ndarray, order: np.ndarray, curves: dict[str, Any]) -> dict[str, Any]:
        sample = self.data.samples.samples[self.indices[b]]
        row: dict[str, Any] = {
            "index": self.indices[b],
            "id": sample.id,
            "source_id": sample.meta.get("source_id"),
            "label": int(self.labels[b]),
            "target": int(self.target[b]),
        }
        for suffix, c in curves.items():
            d_auc, i_auc = c.aucs()
            row[f"deletion{suffix}_auc"], row[f"insertion{suffix}_auc"] = float(d_auc[b]), float(i_auc[b])
            row[f"deletion{suffix}_curve"] = [float(v) for v in c.deletion[b]]
            row[f"insertion{suffix}_curve"] = [float(v) for v in c.insertion[b]]
        fg = self.fg[b]
        row["pointing_energy"] = None if fg is None else pointing_energy(imp, fg)
        row["relevance_rank_accuracy"] = (
            None if fg is None else relevance_rank_accuracy(imp, fg, self.settings.mask_threshold, order)
        )
        return row
