"""CCI attribution: ground truth on a model that reads only the top-left quarter, the importance formula by
hand, the step inside ``covar-harness run`` (logs, config, auto mode, errors-only, maps, random baseline, models
without the capability) and ``covar-harness explain``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from covar_harness.attribution import AttributionStep, CCISettings, overlays
from covar_harness.attribution.engine import attribute, sample_seed
from covar_harness.common.safe_files import slug
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.pipeline.contract import PairContext
from covar_harness.results import validation
from toy_vit import GRID, LAYOUTS, SIDE, PlainAdapter, TopLeftReader, layout, load_masked, read, run_cli


# ---- ground truth and formula -------------------------------------------------------------------------------
def _attribute_images(adapter, images, settings=None):
    settings = settings or CCISettings()
    pixels = torch.stack([adapter.preprocess(im) for im in images])
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    target = torch.zeros(len(images), dtype=torch.long)  # "object"
    text = torch.tensor([[1.0, 0.0]]).expand(len(images), 2)
    seeds = [sample_seed(settings.seed, str(i)) for i in range(len(images))]
    return attribute(adapter, pixels, emb, text, target, seeds, settings)


def test_ground_truth_clusters_of_the_read_region_rank_first():
    adapter = TopLeftReader()
    result = _attribute_images(adapter, [layout(tl, seed=i) for i, tl in enumerate(LAYOUTS[:3])])
    tl = TopLeftReader.top_left()
    for b in range(3):
        labels, imp = result.assignments[b], result.importance[b]
        assert labels.unique().numel() == 7, "7 colour regions -> 7 clusters"
        inside = sorted(set(labels[tl].tolist()))
        assert len(inside) == 2 and not set(inside) & set(labels[~tl].tolist()), "TL clusters lie inside TL"
        ranking = imp.argsort(descending=True).tolist()
        assert sorted(ranking[:2]) == inside
        assert (imp[inside] > 0.01).all()
        outside = [k for k in range(7) if k not in inside]
        assert imp[outside].abs().max() < 1e-6, "patches the model never reads have no importance"
        patch_map = result.patch_importance()[b]
        assert (patch_map[tl] > 0).all() and patch_map[~tl].abs().max() < 1e-6
    assert adapter.calls == [(3, 7, GRID * GRID)], "one batched removal call, one pattern per cluster"


class TwoPatches:
    """1x2 grid; patch p contributes e_p to the embedding, so removal is easy to do by hand."""

    name, patch_grid = "toy:two", (1, 2)

    def patch_tokens(self, pixels, layer=-1):
        return torch.tensor([[[0.0], [1.0]]]).expand(pixels.shape[0], 2, 1)

    def encode_images_without(self, pixels, drop):
        keep = (~drop).float()  # (B, K, 2): patch 0 -> [1, 0], patch 1 -> [0, 1]
        return keep

    def encode_images(self, pixels):
        return torch.ones(pixels.shape[0], 2)


@pytest.mark.parametrize("text", [(0.6, 0.8), (-0.6, 0.8)])
def test_importance_formula_by_hand(text):
    adapter = TwoPatches()
    emb = torch.nn.functional.normalize(torch.ones(1, 2), dim=-1)
    t = torch.tensor([text])
    result = attribute(adapter, torch.zeros(1, 3, 1, 2), emb, t, torch.tensor([0]), [0], CCISettings(k=2))
    s = (text[0] + text[1]) / math.sqrt(2)  # cos([1, 1], t)
    s_without = {0: text[1], 1: text[0]}  # removing patch 0 leaves e_1 (cos = t[1]), and vice versa
    assert float(result.s[0]) == pytest.approx(s, abs=1e-6)
    for patch in (0, 1):
        k = int(result.assignments[0, patch])
        assert float(result.drop[0, k]) == pytest.approx(s - s_without[patch], abs=1e-6)
        assert float(result.importance[0, k]) == pytest.approx((s - s_without[patch]) / abs(s), abs=1e-5)
    if text[0] < 0:  # s = 0.1414: removing patch 0 RAISES s -> importance -4.657; dividing by |s| keeps signs
        k0 = int(result.assignments[0, 0])
        assert float(result.importance[0, k0]) == pytest.approx(-4.656854, abs=1e-4)


# ---- the step in `covar-harness run` ------------------------------------------------------------------------
def test_run_logs_cci_per_sample_with_design_keys(tmp_path, toy_catalog, masked_task):
    code, out = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "cci", "--cci-seed", "5")
    assert code == 0
    record, rows = read(out, "toy-topleft", "toy/masked")
    assert validation.validate(record) == []
    cfg = record["config"]["attribution"]
    assert {
        k: cfg[k] for k in ("method", "k", "layer", "target", "seed", "attribute_on", "kmeans_iters", "kmeans_n_init")
    } == {
        "method": "cci",
        "k": 7,
        "layer": -1,
        "target": "pred",
        "seed": 5,
        "attribute_on": "all",
        "kmeans_iters": 100,
        "kmeans_n_init": 3,
    }
    assert cfg["summary"]["n_attributed"] == 4
    tl = TopLeftReader.top_left().tolist()
    for row in rows:
        cci = row["cci"]
        assert {"target", "k", "assignments", "importance", "drop", "s"} <= set(cci)
        assert cci["target"] == row["pred"] and cci["k"] == 7
        assert len(cci["assignments"]) == GRID * GRID and all(0 <= a < 7 for a in cci["assignments"])
        assert len(cci["importance"]) == len(cci["drop"]) == 7
        for k in range(7):
            assert cci["importance"][k] == pytest.approx(cci["drop"][k] / abs(cci["s"]), rel=1e-5, abs=1e-7)
        if row["pred"] == 0:  # "background" wins only for the black-TL image; its text ignores TL entirely
            continue
        top = max(range(7), key=lambda k: cci["importance"][k])
        assert all(tl[n] for n, a in enumerate(cci["assignments"]) if a == top)


def test_auto_attribution_runs_on_masked_tasks_only(tmp_path, toy_catalog, masked_task, plain_task):
    from covar_harness.cli.main import main

    out = tmp_path / "results"
    code = main(
        [
            "run",
            "--models",
            "toy-topleft",
            "--tasks",
            f"{masked_task},{plain_task}",
            "--output-dir",
            str(out),
            "--workers",
            "0",
            "--log-samples",
        ]
    )
    assert code == 0
    masked, masked_rows = read(out, "toy-topleft", "toy/masked")
    plain, plain_rows = read(out, "toy-topleft", "toy/plain")
    assert all("cci" in r for r in masked_rows) and masked["config"]["attribution"]["requested"] == "auto"
    assert not any("cci" in r for r in plain_rows)
    assert plain["config"]["attribution"] == {
        "method": "none",
        "status": "off",
        "requested": "auto",
        "reason": "auto: the task has no foreground masks",
    }
    assert plain["notes"] == []


def test_attribution_none_leaves_no_cci(tmp_path, toy_catalog, masked_task):
    code, out = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "none")
    record, rows = read(out, "toy-topleft", "toy/masked")
    assert code == 0 and "attribution" not in record["config"]
    assert not any("cci" in r for r in rows)


def test_attribute_on_errors_and_label_target(tmp_path, toy_catalog, masked_task):
    code, out = run_cli(
        tmp_path,
        "toy-topleft",
        masked_task,
        "--attribution",
        "cci",
        "--attribute-on",
        "errors",
        "--cci-target",
        "label",
    )
    record, rows = read(out, "toy-topleft", "toy/masked")
    attributed = [r for r in rows if "cci" in r]
    assert code == 0 and len(attributed) == 1 and not attributed[0]["correct"]
    assert attributed[0]["cci"]["target"] == attributed[0]["label"] != attributed[0]["pred"]
    summary = record["config"]["attribution"]["summary"]
    assert (summary["n_attributed"], summary["n_evaluated"]) == (1, 4)


def test_random_attributor_same_clusters_seeded_importances(tmp_path, toy_catalog, masked_task):
    _, out = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "cci")
    _, cci_rows = read(out, "toy-topleft", "toy/masked")
    code, out = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "random")
    record, rand_rows = read(out, "toy-topleft", "toy/masked")
    assert code == 0 and record["config"]["attribution"]["method"] == "random"
    for c, r in zip(cci_rows, rand_rows):
        assert r["cci"]["method"] == "random" and r["cci"]["assignments"] == c["cci"]["assignments"]
        assert all(0 <= v < 1 for v in r["cci"]["importance"]) and r["cci"]["importance"] != c["cci"]["importance"]
    again = read(
        run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "random")[1], "toy-topleft", "toy/masked"
    )[1]
    assert [r["cci"] for r in again] == [r["cci"] for r in rand_rows]
    other = read(
        run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "random", "--cci-seed", "9")[1],
        "toy-topleft",
        "toy/masked",
    )[1]
    assert [r["cci"]["importance"] for r in other] != [r["cci"]["importance"] for r in rand_rows]


def test_random_patch_baseline_draws_every_patch_and_averages_per_cluster():
    """``random-patch``: a per-patch uniform order (not constant over CCI's clusters, unlike ``random``), seeded
    per image; the cluster importances diagnosis reads are the mean of their patches' draws."""
    adapter = TopLeftReader()
    images = [layout(tl, seed=i) for i, tl in enumerate(LAYOUTS[:2])]
    pixels = torch.stack([adapter.preprocess(im) for im in images])
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    target, text = torch.zeros(2, dtype=torch.long), torch.tensor([[1.0, 0.0]]).expand(2, 2)
    seeds = [sample_seed(0, str(i)) for i in range(2)]

    def run(method, seeds=seeds):
        return attribute(adapter, pixels, emb, text, target, seeds, CCISettings(), method)

    patch, clusters = run("random-patch"), run("random")
    assert torch.equal(patch.assignments, clusters.assignments)  # the same clusters, other draws
    maps = patch.patch_importance()
    assert maps.shape == (2, GRID * GRID) and ((maps >= 0) & (maps < 1)).all()
    for b in range(2):
        for k in patch.assignments[b].unique().tolist():
            members = maps[b][patch.assignments[b] == k]
            assert patch.importance[b, k] == pytest.approx(float(members.mean()), abs=1e-6)
        sizes = torch.bincount(patch.assignments[b])
        big = int(sizes.argmax())
        assert maps[b][patch.assignments[b] == big].unique().numel() > 1  # not constant over a cluster
    assert torch.equal(run("random-patch").patch_importance(), maps)  # seeded
    assert not torch.equal(run("random-patch", [s + 1 for s in seeds]).patch_importance(), maps)


def test_model_without_capability_gets_a_note_not_a_crash(tmp_path, toy_catalog, masked_task):
    code, out = run_cli(tmp_path, "toy-plain", masked_task, "--attribution", "cci")
    record, rows = read(out, "toy-plain", "toy/masked")
    assert code == 0 and record["metrics"]["acc1"] == 0.75
    assert record["config"]["attribution"]["status"] == "skipped"
    assert any("skipped" in n and "patch_grid" in n for n in record["notes"])
    assert not any("cci" in r for r in rows)


def test_save_maps_writes_overlays_with_mask_outline(tmp_path, toy_catalog, masked_task):
    maps = tmp_path / "maps"
    code, _ = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "cci", "--save-maps", str(maps))
    files = sorted(maps.rglob("*.png"))
    assert code == 0 and len(files) == 4
    assert files[0].parent == maps / slug("toy-topleft") / slug("toy/masked")  # as the results
    arr = np.asarray(Image.open(files[0]).convert("RGB"))
    side = (arr.shape[1] - 4) // 2  # two square panels and a 4 px gap, then the legend and caption below
    assert side >= 224 and arr.shape[0] > side
    right = arr[:side, side + 4 :]
    outline = np.all(right == tuple(overlays.OUTLINE), axis=-1)
    assert outline[: side // 2 + 2, : side // 2 + 2].sum() > side // 2, "mask outline around the TL quarter"
    assert outline[side // 2 + 4 :, :].sum() == 0 and outline[:, side // 2 + 4 :].sum() == 0
    # image 01 has blue/cyan in the top-left quarter: the heat tints exactly the regions the model reads
    arr = np.asarray(Image.open(files[1]).convert("RGB")).astype(int)[:side]
    left, right, f = arr[:, :side], arr[:, side + 4 :], side // SIDE
    tinted = lambda y, x: np.abs(right[y * f, x * f] - left[y * f, x * f]).sum()  # noqa: E731
    assert tinted(16, 8) > 60 and tinted(16, 24) > 60  # centres of the two top-left regions
    assert tinted(48, 40) == 0 and tinted(48, 56) == 0 and tinted(16, 48) == 0  # regions it never reads


def test_save_maps_needs_attribution_and_k_is_checked(tmp_path, toy_catalog, masked_task):
    code, _ = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "none", "--save-maps", "x")
    assert code == 2
    code, _ = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "cci", "--cci-k", "1")
    assert code == 2


def test_step_is_reusable_across_tasks_and_models():
    """start() resets state: a skipped model does not switch attribution off for the next one."""
    step = AttributionStep("cci")
    samples = SampleSet([Sample("a.png", 0, {"mask": "m.png"})], ["object"], None)
    step.start(PairContext(PlainAdapter(), None, samples))
    assert not step.active
    step.start(PairContext(TopLeftReader(), None, samples))
    assert step.active and step.finish([]).to_json()["notes"] == []


def test_layer_setting_needs_an_adapter_that_takes_it():
    class NoLayer(TopLeftReader):
        def patch_tokens(self, pixels):  # an older adapter: last block only
            return TopLeftReader.patch_tokens(self, pixels)

    samples = SampleSet([Sample("a.png", 0)], ["object"], None)
    step = AttributionStep("cci", layer=0)
    step.start(PairContext(NoLayer(), None, samples))
    assert not step.active and "layer" in step.finish([]).to_json()["notes"][0]
    step = AttributionStep("cci", layer=-1)
    step.start(PairContext(NoLayer(), None, samples))
    assert step.active


def test_step_process_records_and_last_batch(toy_data):
    """process() returns one typed record per attributed sample, keyed by SampleSet position: what later steps
    (diagnosis) read."""
    from covar_harness.pipeline.contract import Batch

    samples = load_masked({"path": str(toy_data)}, toy_data)
    adapter = TopLeftReader()
    pixels = torch.stack([adapter.preprocess(samples.open_image(i)) for i in (1, 3)])
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    W = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # columns: background, object
    batch = Batch([1, 3], pixels, emb, W, emb @ W, torch.tensor([1, 1]), samples)
    step = AttributionStep("cci", attribute_on="errors")
    step.start(PairContext(adapter, None, samples))
    records = step.process(batch)
    assert [r.index for r in records] == [3]  # sample 3 (black top-left) is the only error
    result = records[0].cci  # the typed record (AttributionStep.last is gone)
    assert records[0].index == 3 and len(result.assignments) == GRID * GRID
    assert result.target == 0 and records[0].to_json()["cci"]["importance"] == pytest.approx(
        result.importance, rel=1e-6
    )


def test_explain_prints_cluster_table_and_writes_overlay(tmp_path, toy_catalog, capsys):
    from covar_harness.cli.main import main

    image = tmp_path / "red.png"
    layout(("red", "yellow")).save(image)
    out = tmp_path / "overlay.png"
    code = main(
        [
            "explain",
            "--model",
            "toy-topleft",
            "--image",
            str(image),
            "--classes",
            "object,background",
            "--out",
            str(out),
            "--k",
            "7",
            "--device",
            "cpu",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "predicted: object" in text and "cluster" in text and "#patches" in text
    lines = [ln for ln in text.splitlines() if ln.count("│") >= 4 and ln.split("│")[1].strip().isdigit()]
    assert len(lines) == 7 and sum(int(ln.split("│")[2]) for ln in lines) == GRID * GRID
    first_two = [float(ln.split("│")[3]) for ln in lines[:2]]
    assert all(v > 0.05 for v in first_two) and all(abs(float(ln.split("│")[3])) < 1e-4 for ln in lines[2:])


def test_cci_plugin_registers_without_importing_torch():
    code = (
        "import sys; from covar_harness.catalog.plugin_manager import load_catalog; c = load_catalog(allow='');"
        "assert {'cci', 'random'} <= set(c.attributors.names()); assert 'torch' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ---- real models ----------------------------------------------------------------------------------------------
def covar_task(tmp_path: Path, n: int = 4) -> Path:
    """A tiny dataset in the built-in ``covar`` format (classes.json, metadata.jsonl, images, masks), so the
    default ``--attribution auto`` turns CCI on and the diagnosis finds dataset masks (no segmenter download)."""
    from helpers import COLOURS, make_image

    root = tmp_path / "covar"
    (root / "bg_varied" / "masks").mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(["cat", "dog"]))
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[8:32, 8:32] = 255
    lines = []
    for i in range(n):
        cls = ("cat", "dog")[i % 2]
        make_image(COLOURS[cls], 40, seed=i).save(root / "bg_varied" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "bg_varied" / "masks" / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "label": cls, "mask": f"masks/{i:02d}.png"}))
    (root / "bg_varied" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    body = {
        "task": "toy/covar",
        "dataset": {"format": "covar", "path": str(root), "subset": "bg_varied"},
        "templates": ["a photo of a {}."],
        "version": 1,
    }
    path = tmp_path / "covar.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_openclip_end_to_end_cci(tmp_path, openclip_dir):
    """The tiny open_clip ViT (4x4 patches) through the CLI entry point (in-process: one torch import), with
    the DEFAULT attribution setting on a task that ships masks."""
    from covar_harness.cli.main import main

    task = covar_task(tmp_path)
    out, maps = tmp_path / "res", tmp_path / "maps"
    spec = f"openclip:local-dir:{openclip_dir}"
    code = main(
        [
            "run",
            "--models",
            spec,
            "--tasks",
            str(task),
            "--output-dir",
            str(out),
            "--workers",
            "0",
            "--cci-k",
            "3",
            "--log-samples",
            "--save-maps",
            str(maps),
        ]
    )
    assert code == 0
    record, rows = read(out, spec, "toy/covar")
    assert record["config"]["attribution"]["status"] == "ran", record["notes"]
    assert record["config"]["attribution"]["requested"] == "auto"
    assert len(rows) == 4 and all(len(r["cci"]["assignments"]) == 16 for r in rows)
    for r in rows:
        imp, drop, s = r["cci"]["importance"], r["cci"]["drop"], r["cci"]["s"]
        assert len(imp) == 3 and any(abs(v) > 0 for v in drop)
        assert all(i == pytest.approx(d / abs(s), rel=1e-4, abs=1e-6) for i, d in zip(imp, drop))
    assert len(list(maps.rglob("*.png"))) == 4


@pytest.mark.parametrize("family", ["siglip"])  # MAP head: the pooling open_clip's test does not cover
def test_hf_end_to_end_cci(tmp_path, family):
    """A tiny Hugging Face SigLIP (8x8 patches, attention-pool head) through ``run --attribution cci``."""
    from covar_harness.cli.main import main
    from hf_helpers import save_tiny

    model_dir = save_tiny(family, tmp_path / family)
    task = covar_task(tmp_path)
    out, spec = tmp_path / "res", f"hf:{model_dir}"
    code = main(
        [
            "run",
            "--models",
            spec,
            "--tasks",
            str(task),
            "--output-dir",
            str(out),
            "--workers",
            "0",
            "--attribution",
            "cci",
            "--log-samples",
        ]
    )
    assert code == 0
    record, rows = read(out, spec, "toy/covar")
    assert record["config"]["attribution"]["status"] == "ran", record["notes"]
    for r in rows:
        assert len(r["cci"]["assignments"]) == 64 and len(r["cci"]["importance"]) == 7
        assert any(abs(v) > 0 for v in r["cci"]["drop"])
