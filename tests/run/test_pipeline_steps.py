"""The typed per-sample pipeline (issue 13): steps, typed records and summaries, diagnosis reading attribution's
typed record, and steps written against the older contract (positional ``start``, dict records, dict summary).

The toys here are shared with ``test_pipeline_extensions``: a 2x2-patch model whose embedding is the sum of its
patches' mean colours, images with a coloured object in the top-left patch and its mask, and a plugin that
registers both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from covar_harness import hookimpl
from covar_harness.data.samples import Sample, SampleSet
from helpers import patch_everywhere, with_masks

SIDE, PATCH = 16, 8
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class PatchSum:
    """Patch tokens = mean RGB per 8x8 patch; embedding = the sum over kept patches (+ a small bias); text "red"
    = [1, 0, 0] etc. Removal is exact, so every importance can be checked by hand."""

    name = "toy:patch-sum"
    patch_grid = (SIDE // PATCH, SIDE // PATCH)
    supports_pattern_batches = True

    def preprocess(self, image):
        arr = np.asarray(image.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def patch_tokens(self, pixels, layer=-1):
        p = pixels.float().unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH).mean(dim=(-1, -2))  # (B, 3, g, g)
        return p.permute(0, 2, 3, 1).reshape(pixels.shape[0], -1, 3)

    def encode_images(self, pixels):
        return self.patch_tokens(pixels).sum(dim=1) + 0.01

    def encode_images_without(self, pixels, drop):
        keep = (~drop).float()
        tokens = self.patch_tokens(pixels)
        if drop.dim() == 2:
            return (keep[:, :, None] * tokens).sum(dim=1) + 0.01
        return keep @ tokens + 0.01

    def encode_texts(self, texts):
        return torch.tensor([[float(name in t) for name in COLOURS] for t in texts])


def image(obj: str, background: str) -> Image.Image:
    arr = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    arr[:, :] = COLOURS[background]
    arr[:PATCH, :PATCH] = COLOURS[obj]
    return Image.fromarray(arr)


def make_data(root: Path) -> Path:
    """Per class (the object's colour) two images on other backgrounds, with top-left masks."""
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[:PATCH, :PATCH] = 255
    for obj in ("red", "green"):
        for sub in ("images", "masks"):
            (root / sub / obj).mkdir(parents=True, exist_ok=True)
        for j, bg in enumerate(c for c in COLOURS if c != obj):
            image(obj, bg).save(root / "images" / obj / f"{j}.png")
            Image.fromarray(mask).save(root / "masks" / obj / f"{j}.png")
    return root


def load(ds: dict, data_dir: Path) -> SampleSet:
    root = Path(ds["path"])
    classes = sorted(p.name for p in (root / "images").iterdir())
    samples = [
        Sample(f"images/{c}/{f.name}", i, {"mask": f"masks/{c}/{f.name}"})
        for i, c in enumerate(classes)
        for f in sorted((root / "images" / c).iterdir())
    ]
    return SampleSet(samples, classes, root, "pipeline toy")


def write_task(tmp_path: Path) -> Path:
    body = {
        "task": "toy/pipeline",
        "dataset": {"format": "pipeline-toy", "path": str(make_data(tmp_path / "data"))},
        "templates": ["{}"],
        "version": 1,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


class ToyPlugin:
    @hookimpl
    def register_models(self, register):
        register("toy-patch-sum", PatchSum)

    @hookimpl
    def register_dataset_formats(self, register):
        register("pipeline-toy", load)


def with_plugins(monkeypatch, *plugins) -> None:
    """The CLI (in-process) and ``load_catalog`` see ``plugins`` next to the built-ins."""
    from covar_harness.catalog import plugin_manager

    original = plugin_manager.load_catalog

    def load_with(include_paths=(), allow=None, extra_plugins=()):
        return original(include_paths, allow, [*extra_plugins, *plugins])

    patch_everywhere(monkeypatch, plugin_manager, "load_catalog", load_with)


def evaluate(tmp_path: Path, steps: list, rules=("paper", "counterfactual"), extra_plugins=()) -> dict:
    """``evaluate_task`` on the toy task with ``steps`` and diagnosis under ``rules`` (dataset masks)."""
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness.diagnosis.rules import DiagnosisSettings
    from covar_harness.run.evaluator import evaluate_task
    from covar_harness.run.options import RunOptions
    from covar_harness.run.pair import PairRequest
    from covar_harness.run.progress import Reporter
    from covar_harness.run.text_cache import ClassifierCache

    catalog = load_catalog([write_task(tmp_path)], allow="", extra_plugins=[ToyPlugin(), *extra_plugins])
    options = RunOptions(
        workers=0,
        batch_size=3,
        steps=steps,
        segmenter="dataset",
        diagnosis=DiagnosisSettings(rules=tuple(rules), bootstrap=20),
    )
    adapter = PatchSum()
    return evaluate_task(
        PairRequest(
            adapter,
            catalog.tasks.get("toy/pipeline"),
            catalog,
            options,
            ClassifierCache(adapter),
            Reporter(),
            "toy-patch-sum",
        )
    )


# ---- the typed pipeline end to end -------------------------------------------------------------------------------
def test_attribution_then_diagnosis_in_one_loop(tmp_path):
    """Red or green object top-left; a background of the other class's colour wins: those errors are
    background-driven under every rule, the correct decisions foreground-driven."""
    from covar_harness.attribution import AttributionStep

    record = evaluate(tmp_path, [AttributionStep("cci", k=2)])
    rows = record["samples"]
    assert [r["correct"] for r in rows] == [False, True, False, True]  # green on red / blue, red on green / blue
    for row in rows:
        assert list(row)[:6] == ["index", "file", "label", "pred", "correct", "top5"]
        logged = [
            k for k in row if k in ("cci", "counterfactual", "fg_fraction", "driver", "error_type", "drivers", "scores")
        ]
        assert logged == ["cci", "counterfactual", "fg_fraction", "driver"] + (
            ["error_type"] if not row["correct"] else []
        ) + ["drivers", "scores"]
        want = "fg" if row["correct"] else "bg"
        assert row["drivers"] == {"paper": want, "counterfactual": want}
    assert record["metrics"]["bg_er"] == 1.0 and record["metrics"]["fg_driven_rate"] == 0.5
    assert list(record["config"]) == ["attribution", "diagnosis", "templates", "classnames", "task_digest"]
    assert record["config"]["diagnosis"]["by_rule"]["counterfactual"]["n_undetermined"] == 0


def test_records_serialise_to_the_logged_fields_in_order():
    from covar_harness.attribution import AttributionRecord
    from covar_harness.attribution.records import CCIRecord, RegionRecord
    from covar_harness.diagnosis.rules import DiagnosisRecord, RuleOutcome

    rec = AttributionRecord(
        3,
        CCIRecord("cci", 1, 2, [0, 1], [0.5, -0.25], 0.9, [0.45, -0.2]),
        counterfactual=RegionRecord(0.1, None, 1, None, None),
    )
    assert json.dumps(rec.to_json()) == (
        '{"index": 3, "cci": {"method": "cci", "target": 1, "k": 2, "assignments": [0, 1], "importance": '
        '[0.5, -0.25], "s": 0.9, "drop": [0.45, -0.2]}, "counterfactual": {"s_fg_only": 0.1, "s_bg_only": null, '
        '"pred_fg_only": 1, "pred_bg_only": null, "outcome": null}}'
    )
    assert rec.cci.k == 2 and rec.shapley is None and set(rec.to_json()) == {"index", "cci", "counterfactual"}
    assert "drop" not in CCIRecord("random", 0, 2, [0, 1], [0.1, 0.2], 0.3).to_json()
    diag = DiagnosisRecord(
        3, False, True, {"paper": RuleOutcome(0.2, "bg", "bg"), "area": RuleOutcome(0.6, "fg", "other")}
    )
    assert diag.log_fields() == {
        "fg_fraction": 0.2,
        "driver": "bg",
        "null_fg": None,
        "error_type": "bg",
        "drivers": {"paper": "bg", "area": "fg"},
        "scores": {"paper": 0.2, "area": 0.6},
        "nulls": {"paper": None, "area": None},
    }
    assert list(diag.log_fields()) == ["fg_fraction", "driver", "null_fg", "error_type", "drivers", "scores", "nulls"]


def test_diagnosis_reads_the_typed_record_and_a_renamed_field_fails_loudly():
    """Diagnosis takes attribution's record of the same batch by type. A record whose field was renamed is an
    AttributeError (and a mypy error), not a sample silently left "undetermined"."""
    from types import SimpleNamespace

    from covar_harness.attribution import AttributionRecord
    from covar_harness.attribution.records import CCIRecord
    from covar_harness.diagnosis.rules import DiagnosisSettings, Evidence
    from covar_harness.diagnosis.step import DiagnosisStep
    from covar_harness.pipeline.contract import Batch

    samples = SampleSet([Sample("a.png", 1)], ["green", "red"], None)
    batch = Batch(
        [0],
        torch.zeros(1, 3, SIDE, SIDE),
        torch.zeros(1, 3),
        torch.zeros(3, 2),
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([1]),
        samples,
    )
    with_masks(batch, [np.array([1.0, 0.0, 0.0, 0.0])])
    batch.add([AttributionRecord(0, CCIRecord("cci", 1, 2, [0, 1, 1, 1], [0.9, 0.1], 0.5))])
    step = DiagnosisStep(DiagnosisSettings(rules=("paper", "area")))
    (out,) = step.process(batch)
    assert out.outcomes["paper"].score == pytest.approx(0.9 / (0.9 + 3 * 0.1)) and out.outcomes["paper"].driver == "fg"
    assert out.correct and out.outcomes["area"].driver == "fg"
    renamed = SimpleNamespace(
        cci=SimpleNamespace(assignments=[0, 1, 1, 1], weights=[0.8, 0.2]), shapley=None, counterfactual=None
    )
    with pytest.raises(AttributeError, match="importance"):
        Evidence.of(renamed)


def test_a_step_is_started_with_the_pair_context_and_inactive_steps_are_not_asked(tmp_path):
    from covar_harness.pipeline.contract import PairContext, Step

    class Off(Step):
        name = "off"

        def start(self, ctx: PairContext) -> None:
            self.ctx, self.active = ctx, False

        def process(self, batch):
            raise AssertionError("an inactive step is never asked for records")

    step = Off()
    record = evaluate(tmp_path, [step])
    assert step.ctx.classnames == ["green", "red"] and step.ctx.model_spec == "toy-patch-sum"
    assert step.ctx.task.task == "toy/pipeline" and len(step.ctx.samples) == 4
    assert record["config"]["off"] == {}  # the base class's summary
    assert "diagnosis" not in record["config"] and "driver" not in record["samples"][0]  # nothing attributed


# ---- only Step subclasses run -------------------------------------------------------------------------------------
class NotAStep:
    """A step-like object that does not subclass Step (the contract before typed records)."""

    name = "old"

    def start(self, adapter, task, samples):
        raise AssertionError("never started")


def test_a_pipeline_refuses_what_is_not_a_step():
    from covar_harness.pipeline.contract import Pipeline

    with pytest.raises(TypeError, match="NotAStep.*is not a covar_harness.pipeline.contract.Step subclass"):
        Pipeline([NotAStep()])


def test_an_attributor_plugin_giving_a_non_step_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from covar_harness.cli.main import main

    class OldPlugin:
        @hookimpl
        def register_attributors(self, register):
            register("old-style", lambda **settings: NotAStep(), description="an older third-party step")

    with_plugins(monkeypatch, ToyPlugin(), OldPlugin())
    args = ["run", "--models", "toy-patch-sum", "--tasks", str(write_task(tmp_path)), "--attribution", "old-style"]
    code = main([*args, "--output-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2 and "attributor 'old-style' gave NotAStep, not a covar_harness.pipeline.contract.Step" in err
    assert not (tmp_path / "results").exists()
