"""What a run is asked to do (``RunOptions``: one settings object for the run, read by the plan, every pair kind
and the steps through ``pipeline.contract.RunSettings``) and what each pair came to (``PairOutcome``: what the
progress lines and the summary show). Apart from the evaluator so that the plan, the pair kinds and the reporters
read them without importing the evaluator that drives them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from covar_harness.common.metrics import BOOTSTRAP_VERSION
from covar_harness.diagnosis.distractors import DistractorStep
from covar_harness.diagnosis.step import DiagnosisStep
from covar_harness.masks.step import MaskStep
from covar_harness.pipeline.contract import Step
from covar_harness.results.maps import MapStep


@dataclass
class RunOptions:
    output_dir: Path = Path("results")
    data_dir: Path | None = None
    batch_size: int | str = 64  # or "auto": resolved per model in _run_model (batch_size.py)
    workers: int | None = None  # None: min(4, cpu count)
    device: str = "auto"
    precision: str = "fp32"
    limit: int | None = None
    seed: int = 0
    log_samples: bool = False
    overwrite: bool = False
    cache_dir: str | None = None
    steps: list[Any] = field(default_factory=list)  # analysis steps (attribution), see pipeline.BatchStep
    diagnosis: Any = None  # covar_harness.diagnosis.rules.DiagnosisSettings; None: no fg/bg diagnosis
    segmenter: str = "auto"  # where foreground masks come from: auto | dataset | groundedsam | plugin | none
    segmenter_settings: dict = field(default_factory=dict)
    shard: tuple[int, int] | None = None  # (i, n): only the i-th of n shards of the pairs (plan.shard_pairs)
    text_cache: Path | None = None  # persistent class-text embeddings (text_cache.py); None: in memory only
    checkpoint_every: int = 0  # batches between appends to the pair's part file (partfiles.py); 0: no part file
    dist_timeout: float = 3600.0  # seconds a rank waits for the others (distributed.py)
    world: Any = None  # distributed.World of a torchrun / accelerate job; None: from the environment in ``run``
    distractors: Any = None  # covar_harness.diagnosis.distractors.DistractorSettings; None or not enabled: no check
    batch_size_auto: dict | None = None  # how ``--batch-size auto`` was resolved for the model (batch_size.py)
    model_args: dict = field(default_factory=dict)  # --model-args (model_args.py); per model: merged with SPEC@...
    concepts: Any = None  # a covar_harness.concepts.ConceptStep (--concepts): names the regions, last; None: off

    @property
    def rows_per_batch(self) -> int:
        """The batch size once ``auto`` has been resolved for the model (``_with_batch_size``)."""
        if not isinstance(self.batch_size, int):
            raise RuntimeError("--batch-size auto read before it was resolved for the model")
        return self.batch_size

    def result_settings(self) -> dict[str, Any]:
        """Every setting that can change a number in a result file: recorded in it as ``config.run_settings``
        and compared before an existing file is reused (resume)."""
        steps = {step.name: step.run_settings() for step in self.steps}
        diagnosis = None
        if self.diagnosis is not None:  # the diagnosis's settings and those of the masks it reads
            diagnosis = {**DiagnosisStep(self.diagnosis).run_settings(), **self.mask_step().run_settings()}
        settings = {
            "precision": self.precision,
            "seed": self.seed,
            "limit": self.limit,
            "steps": steps,
            "diagnosis": diagnosis,
        }
        if self.model_args:  # recorded only when given: results written before model arguments existed still resume
            settings["model_args"] = dict(self.model_args)
        if self._distractors_on():  # recorded only when on: results written before the check existed still resume
            settings["distractors"] = self.distractors.as_config()
        if self.concepts is not None:  # recorded only when on: results written before naming existed still resume
            settings["concepts"] = self.concepts.run_settings()
        # how every interval draws its replicates, last (where rescore adds it): files made with the old draws do
        # not resume (issue 26)
        settings["bootstrap"] = BOOTSTRAP_VERSION
        return json.loads(json.dumps(settings, default=str))  # as it reads back from the file (lists, not tuples)

    def for_model(self, ref: Any) -> RunOptions:
        """These options for one model: ``--model-args`` and the spec's own ``@key=value`` arguments (which win)
        in place of the run's precision, device and cache folder."""
        args = {**self.model_args, **getattr(ref, "arguments", {})}
        if not args:
            return self
        return replace(
            self,
            precision=args.get("precision", self.precision),
            device=args.get("device", self.device),
            cache_dir=args.get("cache_dir", self.cache_dir),
            model_args=args,
        )

    def cluster_counts(self) -> list[int]:
        """The K of every analysis step that clusters (its ``settings.k``): what the patch count must allow and
        what a batch's removal call holds. Third-party steps need not have settings."""
        ks = (getattr(getattr(step, "settings", None), "k", None) for step in self.steps)
        return [k for k in ks if isinstance(k, int)]

    def mask_step(self) -> MaskStep:
        """The step that makes the foreground masks (``--segmenter``), first in the pipeline."""
        return MaskStep(self.segmenter, self.segmenter_settings)

    def analysis_steps(self) -> list[Step]:
        """The pipeline of every pair, in order (docs/design.md section 7): the masks (made only when the
        diagnosis asks), the analysis steps (attribution), the diagnosis that reads both, the distractor check,
        the ``--save-maps`` overlays captioned from the diagnosis, then concept naming."""
        if self.diagnosis is None:
            before: list[Step] = []
            after: list[Step] = []
        else:
            before, after = [self.mask_step()], [DiagnosisStep(self.diagnosis)]
            if self._distractors_on():
                after.append(DistractorStep(self.distractors))
        maps = self.map_step()
        if maps is not None:
            after.append(maps)
        if self.concepts is not None:  # reads attribution's and the diagnosis's records of the same batch
            after.append(self.concepts)
        return [*before, *self.steps, *after]

    def map_step(self) -> MapStep | None:
        """The ``--save-maps`` step (the folder is the attribution step's ``save_maps``), or None without it."""
        roots = [root for root in (getattr(step, "save_maps", None) for step in self.steps) if root is not None]
        return MapStep(roots[0]) if roots else None

    def _distractors_on(self) -> bool:
        return self.diagnosis is not None and getattr(self.distractors, "enabled", False) is True


@dataclass
class PairOutcome:
    model: str
    task: str
    status: str  # done | skipped | failed
    path: Path
    metrics: dict = field(default_factory=dict)
    error: str = ""
    n_failed: int = 0
    advice: str = ""  # what to do about the error, the same for every pair it hits (print once)
    headline: str = "acc1"  # the task's headline metric: what the progress line and the summary show
