"""Zero-shot evaluation: parity with open_clip's reference, caching, bad images, metrics."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import covar_harness
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.common.metrics import bootstrap_interval, classification_metrics
from covar_harness.models.specs import resolve_models
from covar_harness.run.evaluator import PAIR_KINDS, evaluate_task, run
from covar_harness.run.options import RunOptions
from covar_harness.run.pair import PairRequest
from covar_harness.run.progress import Reporter
from covar_harness.run.text_cache import ClassifierCache, build_classifier
from helpers import make_image_folder, write_task_yaml


def test_predictions_equal_open_clip_reference(openclip_dir, tmp_path):
    import open_clip
    from PIL import Image

    adapter = covar_harness.load_model(f"openclip:local-dir:{openclip_dir}")
    classes = ["cat", "dog", "fish", "bird", "tree", "car"]
    templates = ["a photo of a {}.", "a drawing of a {}.", "itap of a {}."]
    folder = make_image_folder(tmp_path / "imgs", classes=("cat", "dog", "fish", "bird"), per_class=3)
    images = [Image.open(p).convert("RGB") for p in sorted(folder.rglob("*.png"))]
    pixels = torch.stack([adapter.preprocess(im) for im in images])

    ours = build_classifier(adapter, classes, templates)
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    ours_pred = (emb @ ours).argmax(dim=-1)

    model, tok = adapter.model, open_clip.get_tokenizer(f"local-dir:{openclip_dir}")
    ref = open_clip.build_zero_shot_classifier(
        model,
        tokenizer=tok,
        classnames=classes,
        templates=[lambda c, t=t: t.format(c) for t in templates],
        num_classes_per_batch=2,
        device="cpu",
        use_tqdm=False,
    )
    with torch.no_grad():
        ref_emb = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.equal(ours_pred, (ref_emb @ ref).argmax(dim=-1))


def test_classifier_cache_encodes_each_prompt_set_once():
    calls = []

    class Counting:
        name = "counting"

        def encode_texts(self, texts):
            calls.append(len(texts))
            return torch.randn(len(texts), 4)

    cache = ClassifierCache(Counting())
    a = cache.get(["x", "y"], ["{}"], Reporter())
    b = cache.get(["x", "y"], ["{}"], Reporter())
    cache.get(["x", "z"], ["{}"], Reporter())
    assert a is b and calls == [2, 2]


def test_metrics_by_hand():
    labels = np.array([0, 0, 0, 1])
    top = np.array([[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [0, 2, 1, 3, 4], [2, 3, 4, 5, 1]])
    m = classification_metrics(labels, top, n_classes=6)
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc5"] == pytest.approx(1.0)
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 0) / 2)
    assert classification_metrics(labels, top[:, :3], n_classes=3)["acc5"] is None
    lo, hi = bootstrap_interval(np.array([1.0] * 50 + [0.0] * 50), seed=0)
    assert lo < 0.5 < hi and hi - lo < 0.3


def test_run_skips_corrupt_images_and_counts_them(openclip_dir, tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=3)
    (folder / "dog" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (folder / "cat" / "zz_empty.jpg").write_bytes(b"")
    cat = load_catalog(include_paths=[write_task_yaml(tmp_path / "t.yaml", "toy/c", folder)])
    opts = RunOptions(output_dir=tmp_path / "out", workers=0, batch_size=4, log_samples=True)
    (outcome,) = run(resolve_models([f"openclip:local-dir:{openclip_dir}"], cat), cat.tasks.resolve("toy/c"), cat, opts)
    assert outcome.status == "done"
    res = json.loads(outcome.path.read_text())
    assert res["task"]["n_samples"] == 9 and res["task"]["n_failed"] == 2
    assert sorted(res["failed_files"]) == ["cat/zz_empty.jpg", "dog/zz_truncated.png"]
    rows = [json.loads(line) for line in outcome.path.with_name("toy__c.samples.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {"index", "file", "label", "pred", "correct", "top5"} <= set(rows[0])
    assert all(r["correct"] == (r["pred"] == r["label"]) and r["top5"][0] == r["pred"] for r in rows)
    assert res["metrics"]["acc1"] == pytest.approx(np.mean([r["correct"] for r in rows]))


def test_limit_is_a_seeded_subset_covering_classes(openclip_dir, tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=6)
    cat = load_catalog(include_paths=[write_task_yaml(tmp_path / "t.yaml", "toy/l", folder)])
    models = resolve_models([f"openclip:local-dir:{openclip_dir}"], cat)

    def files(seed, out):
        opts = RunOptions(output_dir=tmp_path / out, workers=0, limit=7, seed=seed, log_samples=True)
        (o,) = run(models, cat.tasks.resolve("toy/l"), cat, opts)
        return [json.loads(x)["file"] for x in o.path.with_name("toy__l.samples.jsonl").read_text().splitlines()]

    a, b, c = files(0, "a"), files(0, "b"), files(1, "c")
    assert len(a) == 7 and a == b and a != c
    assert len({f.split("/")[0] for f in a}) >= 2


def test_a_task_kind_no_entry_opens_fails_with_one_line():
    """A format registering a kind the run does not know is refused before any data or forward, not run as
    classification."""
    entry = SimpleNamespace(extra={"task_kind": "segmentation"})
    catalog = SimpleNamespace(formats=SimpleNamespace(entry=lambda name: entry))
    cfg = SimpleNamespace(task="mine/masks", dataset={"format": "masks"})
    with pytest.raises(ValueError) as err:
        evaluate_task(PairRequest(None, cfg, catalog, RunOptions(), None, None))
    assert str(err.value) == (
        "task 'mine/masks': format 'masks' registered task_kind 'segmentation'; known: classification, retrieval"
    )
    assert sorted(PAIR_KINDS) == ["classification", "retrieval"]
