"""One model x task: every method's importance maps, curves and localisation, per sample.

Data, class names, templates and class embeddings come from the evaluator's own helpers (``open_task_data``,
``limit_samples``, ``task_classnames``, ``ClassifierCache``). The images go through the run's one per-sample pass
(``run.pair.image_pass``): one forward per batch, then the pipeline's steps on the same batch, the mask step
(``masks.step.MaskStep`` with the task's own masks, mapped onto the patch grid as in a run) and the curves
(``faithfulness.step.CurveStep``).

A retrieval task (``retrieval.is_retrieval_task``) is mapped onto the same machinery: one "class" per image, whose
text is the image's caption set, so attribution explains the paired caption (``_retrieval_pair``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from covar_harness.catalog.taskconfig import TASK_KIND
from covar_harness.data.samples import open_task_data
from covar_harness.data.task_inputs import limit_samples, task_classnames, task_templates
from covar_harness.faithfulness.settings import FaithfulnessSettings
from covar_harness.faithfulness.step import CurveStep, MethodRun
from covar_harness.masks.step import MaskStep
from covar_harness.models.adapter import logit_scale
from covar_harness.pipeline.contract import PairContext, Pipeline
from covar_harness.run.evaluator import RunOptions
from covar_harness.run.pair import image_pass
from covar_harness.run.progress import Reporter
from covar_harness.run.retrieval import PAIRED_TEXT, is_retrieval_task, paired_caption_classifier, self_labelled

if TYPE_CHECKING:
    import torch

    from covar_harness.attribution.base import Attributor
    from covar_harness.attribution.settings import CCISettings
    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.catalog.taskconfig import TaskConfig
    from covar_harness.data.samples import SampleSet


@dataclass
class PairData:
    """What the pass over one task needs: the task, its samples (``--limit`` applied), class embeddings (D, C) and
    the catalogue (where the masks' ``dataset`` segmenter comes from)."""

    task: TaskConfig
    samples: SampleSet
    classnames: list[str]
    classifier: torch.Tensor
    catalog: Catalog
    n_failed: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. why the token-removal curves were not run
    settings: dict[str, Any] = field(default_factory=dict)  # recorded with the curve settings (retrieval's text)


def open_pair_data(adapter: Any, cfg: Any, catalog: Any, classifiers: Any, limit: int | None, seed: int, data_dir):
    """The pair's samples and class embeddings through the evaluator's helpers (a retrieval task's: its images'
    caption sets)."""

    samples = limit_samples(open_task_data(cfg, catalog, data_dir), limit, seed)
    if is_retrieval_task(cfg, catalog):
        return _retrieval_pair(adapter, cfg, catalog, samples)
    if samples.class_map is not None:  # scores are max-logit buckets there: no one linear classifier to perturb
        raise ValueError(
            f"task {cfg.task!r} maps a {len(samples.class_map.classnames)}-way classifier onto its labels; the "
            "faithfulness curves need a classifier over the task's own classes (for ImageNet-9: imagenet9-9way/*)"
        )
    classnames = task_classnames(cfg, samples)
    W = classifiers.get(classnames, task_templates(cfg, samples), Reporter())
    return PairData(cfg, samples, classnames, W, catalog)


# what a retrieval pair's result records in ``settings``: the explained text of image i is its caption set
RETRIEVAL_SETTINGS = {"task_kind": TASK_KIND, "explained_text": PAIRED_TEXT}


def _retrieval_pair(adapter: Any, cfg: TaskConfig, catalog: Catalog, samples: Any) -> PairData:
    """A retrieval pair as a classification pair: class i is image i's caption set (the normalised mean of its
    captions' embeddings, ``retrieval.paired_caption_classifier``) and image i's label is i. So ``--target label``
    explains the paired caption, ``--target pred`` the best-matching caption set among the pair's images (the
    image -> text top 1), and ``--score softmax`` is the softmax over the pair's caption sets (the retrieval
    softmax over ``--limit`` images when given); ``--score cosine`` is the image-text similarity itself."""

    if not hasattr(samples, "captions"):
        raise ValueError(f"{samples.description or 'this dataset'}: a retrieval task without captions")
    own = self_labelled(samples)
    W = paired_caption_classifier(adapter, own, Reporter())
    return PairData(cfg, own, [s.id for s in own.samples], W, catalog, settings=dict(RETRIEVAL_SETTINGS))


def run_pair(
    adapter: Any,
    data: PairData,
    methods: Sequence[str | type[Attributor]],
    settings: FaithfulnessSettings,
    cci: CCISettings,
    batch_size: int = 16,
) -> dict[str, MethodRun]:
    """Every method (a name, or an Attributor class such as RISE with its settings) over every sample of the
    pair, in the run's one pass over the images (``image_pass``: one forward per batch, the masks, then every
    method's curves on the same batch); keyed by method name. Unreadable images are counted in ``data.n_failed``;
    notes (no token removal, unreadable masks) go to ``data.notes``."""

    curves = CurveStep(methods, settings, cci, softmax_temperature(adapter, settings)[0])
    pipeline = Pipeline([MaskStep("dataset"), curves])
    ctx = PairContext(
        adapter,
        data.task,
        data.samples,
        data.classnames,
        catalog=data.catalog,
        options=RunOptions(batch_size=batch_size, workers=0),  # no part file: a pair is redone whole
        reporter=Reporter(),
        classifier=data.classifier,
    )
    pipeline.start(ctx)
    _, failures = image_pass(ctx, pipeline)
    data.n_failed += len(failures)
    done = pipeline.finish()[-1]
    data.notes += done.summary.notes
    return curves.method_runs(done.records)


def softmax_temperature(adapter: Any, settings: FaithfulnessSettings) -> tuple[float, str]:
    """(T, where it comes from) of the softmax score: ``--temperature`` when given, else the model's own logit
    scale (``models.adapter.logit_scale``; 100 with a note when the model exposes none). Recorded per result in
    ``settings.temperature`` / ``settings.temperature_from``."""
    if settings.temperature is not None:
        return settings.temperature, "--temperature"
    return logit_scale(adapter)
