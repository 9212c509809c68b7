"""Multi-instance GroundedSAM, ``--segmenter-opt`` and diagnosis wherever masks can come from (issue 14, items 4, 6).

The detector and SAM are the tiny offline checkpoints of tests/segmenter_helpers.py; where the test needs known
boxes, the loaded models are swapped for stand-ins that return planted boxes (``PlantedDetector``) and a mask
that is exactly each box (``BoxSam``), so the union is checkable pixel by pixel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_segmenters import forbid_loading, grounded_settings, make_samples

from covar_harness.attribution.settings import NO_MASKS, auto_decision
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.masks.segmenter import (
    check_segmenter_settings,
    choose_segmenter,
    grounding_prompt,
    parse_segmenter_opts,
)
from helpers import make_image_folder, patch_everywhere, write_task_yaml
from helpers import run_cli_inprocess as cli
from segmenter_helpers import BoxSam, PlantedDetector, bert_tokenizer

LEFT, RIGHT, WEAK = (0.25, 0.5, 0.25, 0.5), (0.75, 0.5, 0.25, 0.5), (0.5, 0.1, 0.1, 0.1)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from segmenter_helpers import make_grounding_dino_dir, make_sam_dir

    root = tmp_path_factory.mktemp("grounded-sam-multi")
    return {"detector": str(make_grounding_dino_dir(root / "gdino")), "sam": str(make_sam_dir(root / "sam"))}


def planted(segmenter, boxes=((LEFT, 3.0), (RIGHT, 2.0), (WEAK, -2.0))):
    """Load the tiny models, then plant the detector's boxes and a box-exact SAM."""
    segmenter._load()
    segmenter._models["detector"] = PlantedDetector(list(boxes))
    segmenter._models["sam"] = BoxSam()
    return segmenter


def test_two_boxes_give_the_union_of_their_masks(tmp_path, catalog, tiny):
    samples = make_samples(tmp_path, sizes=((32, 32), (32, 32)))
    settings = grounded_settings(tiny, cache_dir=str(tmp_path / "cache"))  # default thresholds 0.3 / 0.25
    multi = planted(choose_segmenter("groundedsam", samples, catalog, settings))
    masks = multi.masks(samples, [0, 1], ["cat", "dog"])
    for mask in masks:
        arr = np.asarray(mask) > 0
        assert arr[16, 8] and arr[16, 24]  # inside both planted boxes
        assert not arr[16, 16] and not arr[2, 2] and not arr[3, 16]  # between them, a corner, the weak box
    assert multi.last_info == [{"n_boxes": 2}, {"n_boxes": 2}]
    about = multi.describe()
    assert about["multi_box"] is True and about["cache_version"] == 2
    assert about["n_boxes"] == {"n_masks": 2, "mean": 2.0, "max": 2, "n_multi": 2}

    single = planted(choose_segmenter("groundedsam", samples, catalog, {**settings, "multi_box": False}))
    arr = np.asarray(single.masks(samples, [0], ["cat"])[0]) > 0
    assert arr[16, 8] and not arr[16, 24]  # the best box only
    assert single.last_info == [{"n_boxes": 1}]

    fresh = choose_segmenter("groundedsam", samples, catalog, settings)  # n_boxes comes back from the cache
    forbid_loading(fresh, pytest.MonkeyPatch())
    again = fresh.masks(samples, [0, 1], ["cat", "dog"])
    assert fresh.last_info == [{"n_boxes": 2}, {"n_boxes": 2}]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(masks, again))


def test_no_passing_box_is_none_with_zero_boxes(tmp_path, catalog, tiny):
    samples = make_samples(tmp_path, sizes=((32, 32),))
    segmenter = planted(choose_segmenter("groundedsam", samples, catalog, grounded_settings(tiny, cache=False)))
    segmenter._models["detector"] = PlantedDetector([(WEAK, -2.0)])
    assert segmenter.masks(samples, [0], ["cat"]) == [None] and segmenter.last_info == [{"n_boxes": 0}]
    assert segmenter.describe()["n_boxes"] == {"n_masks": 0, "mean": None, "max": 0, "n_multi": 0}


def test_cache_version_bump_recomputes_old_single_box_masks(tmp_path, catalog, tiny, monkeypatch):
    import covar_harness_plugins.segmenters as seg

    samples = make_samples(tmp_path, sizes=((32, 32),))
    settings = grounded_settings(tiny, box_threshold=0.0, text_threshold=0.0, cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(seg, "CACHE_VERSION", 1)
    choose_segmenter("groundedsam", samples, catalog, settings).masks(samples, [0], ["cat"])  # an old entry
    cached = choose_segmenter("groundedsam", samples, catalog, settings)
    forbid_loading(cached, monkeypatch)
    cached.masks(samples, [0], ["cat"])  # same version: served from the cache
    monkeypatch.setattr(seg, "CACHE_VERSION", 2)
    current = choose_segmenter("groundedsam", samples, catalog, settings)
    forbid_loading(current, monkeypatch)
    with pytest.raises(AssertionError, match="models loaded"):  # version 2 does not reuse version 1's masks
        current.masks(samples, [0], ["cat"])


def test_prompts_use_the_first_synonym_or_a_curated_name(tmp_path, catalog, tiny):
    assert grounding_prompt("tench, Tinca tinca") == "tench."
    assert grounding_prompt("great white shark, white shark, man-eater") == "great white shark."
    assert grounding_prompt("crane", {"crane": "crane bird"}) == "crane bird."
    curated = tmp_path / "prompts.json"
    curated.write_text(json.dumps({"Cat, Felis": "red square"}))
    samples = make_samples(tmp_path, sizes=((32, 32),))
    settings = grounded_settings(tiny, box_threshold=0.0, text_threshold=0.0, cache=False, prompts=str(curated))
    segmenter = choose_segmenter("groundedsam", samples, catalog, settings)
    seen = []
    segmenter._compute = lambda images, prompts: seen.extend(prompts) or [(None, 0)] * len(images)
    segmenter.masks(samples, [0, 0], ["Cat, Felis", "dog, domestic dog"])
    assert seen == ["red square.", "dog."] and segmenter.describe()["prompts"] == str(curated)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        choose_segmenter("groundedsam", samples, catalog, {**settings, "prompts": str(tmp_path / "bad.json")})


def test_punctuation_tokens_do_not_count_for_the_text_threshold():
    from covar_harness_plugins.segmenters import _word_token_mask

    tokenizer = bert_tokenizer(extra=("(", ")", ",", "'"))
    ids = tokenizer(["cat ( , ' ) ."], return_tensors="pt")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert "(" in tokens and "'" in tokens  # the punctuation is in the vocabulary, not [UNK]
    words = _word_token_mask(ids, tokenizer)[0].tolist()
    assert [t for t, w in zip(tokens, words) if w] == ["cat"]


# ---- --segmenter-opt ------------------------------------------------------------------------------------------
def test_segmenter_opt_values_are_typed():
    parsed = parse_segmenter_opts(
        ["box_threshold=0.35", "batch_size=4", "multi_box=false", "cache=On", "detector=/m/gdino", "text-threshold=1"]
    )
    assert parsed == {
        "box_threshold": 0.35,
        "batch_size": 4,
        "multi_box": False,
        "cache": True,
        "detector": "/m/gdino",
        "text_threshold": 1,
    }
    for bad in ("box_threshold", "=3", "a b=1"):
        with pytest.raises(UsageError, match="key=value"):
            parse_segmenter_opts([bad])


def test_segmenter_opt_checked_against_the_segmenter(catalog):
    check_segmenter_settings("auto", catalog, {"box_threshold": 0.4})  # auto: its groundedsam fallback
    with pytest.raises(UsageError, match=r"no setting 'box_treshold' \(did you mean 'box_threshold'\?\)"):
        check_segmenter_settings("groundedsam", catalog, {"box_treshold": 0.4})
    with pytest.raises(UsageError, match="box_threshold must be a number in"):
        check_segmenter_settings("auto", catalog, {"box_threshold": 3})
    with pytest.raises(UsageError, match="multi_box must be true or false"):
        check_segmenter_settings("auto", catalog, {"multi_box": "maybe"})
    with pytest.raises(UsageError, match="needs a segmenter"):
        check_segmenter_settings("none", catalog, {"box_threshold": 0.4})
    with pytest.raises(UsageError, match="segmenter 'dataset' has no setting"):
        check_segmenter_settings("dataset", catalog, {"box_threshold": 0.4})


def test_unknown_segmenter_opt_exits_2_before_any_model_loads(task_yaml, monkeypatch):
    import covar_harness.models.specs as models

    def fail(*_, **__):
        raise AssertionError("a model was loaded")

    patch_everywhere(monkeypatch, models, "load_model", fail)
    r = cli("run", "--models", "openclip:ViT-B-32", "--tasks", str(task_yaml), "--segmenter-opt", "box_treshold=0.2")
    assert r.returncode == 2 and "did you mean 'box_threshold'" in r.stderr
    r = cli("run", "--models", "openclip:ViT-B-32", "--tasks", str(task_yaml), "--segmenter-opt", "threshold")
    assert r.returncode == 2 and "key=value" in r.stderr


# ---- --attribution auto ---------------------------------------------------------------------------------------
def test_auto_decision_table():
    assert auto_decision(True, None, "auto", True)[0]  # dataset masks: as before
    assert auto_decision(True, None, "none", False)[0]
    assert auto_decision(True, None, None, False)[0]
    assert auto_decision(False, None, "auto", True) == (False, NO_MASKS)  # maskless, nothing asked: as before
    assert auto_decision(False, True, "auto", True) == (True, auto_decision(False, True, "auto", True)[1])
    assert "diagnose: true" in auto_decision(False, True, "auto", True)[1]
    assert auto_decision(False, None, "groundedsam", True) == (True, "auto: masks from segmenter 'groundedsam'")
    assert auto_decision(False, True, "none", True) == (False, NO_MASKS)  # diagnosis off: no reason to attribute
    assert auto_decision(False, True, "auto", False) == (False, NO_MASKS)
    assert auto_decision(False, None, "dataset", True) == (False, NO_MASKS)
    assert auto_decision(True, False, "auto", True) == (False, "auto: the task says diagnose: false")


def _run(openclip_dir, tiny, task, out, *extra):
    opts = [f"detector={tiny['detector']}", f"sam={tiny['sam']}", "device=cpu", f"cache_dir={out}-cache"]
    opts += ["box_threshold=0", "text_threshold=0"]
    args = ["run", "--models", f"openclip:local-dir:{openclip_dir}", "--tasks", str(task), "--output-dir", str(out)]
    args += ["--workers", "0", "--log-samples", *extra]
    for opt in opts:
        args += ["--segmenter-opt", opt]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(next(out.rglob("toy__*.json")).read_text())


def test_auto_runs_cci_on_a_maskless_task_that_asks_or_names_a_segmenter(openclip_dir, tiny, tmp_path):
    images = make_image_folder(tmp_path / "imgs", per_class=2)
    asks = write_task_yaml(tmp_path / "a.yaml", "toy/asks", images, diagnose=True)
    plain = write_task_yaml(tmp_path / "p.yaml", "toy/plain", images)

    res = _run(openclip_dir, tiny, asks, tmp_path / "asks")
    attribution, diagnosis = res["config"]["attribution"], res["config"]["diagnosis"]
    assert attribution["status"] == "ran" and attribution["requested"] == "auto"
    assert "diagnose: true" in attribution["auto"]
    assert diagnosis["segmenter"]["name"] == "groundedsam" and diagnosis["segmenter"]["n_boxes"]["n_masks"] == 6
    assert diagnosis["segmenter"]["n_without_mask"] == 0 and diagnosis.get("status") != "skipped"
    assert res["config"]["run_settings"]["diagnosis"]["segmenter_settings"]["box_threshold"] == 0
    log = next((tmp_path / "asks").rglob("*.samples.jsonl")).read_text().splitlines()
    assert [json.loads(line)["n_boxes"] >= 1 for line in log] == [True] * 6  # per sample, in the log

    res = _run(openclip_dir, tiny, plain, tmp_path / "plain")  # nothing asks: off, as before, and says why
    assert res["config"]["attribution"] == {"method": "none", "status": "off", "requested": "auto", "reason": NO_MASKS}
    assert "diagnosis" not in res["config"]

    res = _run(openclip_dir, tiny, plain, tmp_path / "named", "--segmenter", "groundedsam")
    assert res["config"]["attribution"]["auto"] == "auto: masks from segmenter 'groundedsam'"
    assert res["config"]["diagnosis"]["segmenter"]["name"] == "groundedsam"


def test_task_yaml_diagnose_must_be_a_bool(tmp_path):
    from covar_harness.catalog.taskconfig import TaskConfigError, load_task_file

    images = make_image_folder(tmp_path / "imgs", per_class=1)
    assert load_task_file(write_task_yaml(tmp_path / "a.yaml", "toy/a", images, diagnose=True)).diagnose is True
    plain = load_task_file(write_task_yaml(tmp_path / "p.yaml", "toy/p", images))
    assert plain.diagnose is None and "diagnose" not in plain.as_dict()  # recorded tasks unchanged
    with pytest.raises(TaskConfigError, match="diagnose.*true or false"):
        load_task_file(write_task_yaml(tmp_path / "b.yaml", "toy/b", images, diagnose="yes"))


def test_duplicate_boxes_of_one_instance_count_once(tmp_path, catalog, tiny):
    """DINO proposes near-identical boxes for one object: NMS (nms_iou 0.8, Grounded-SAM's demo value) keeps the
    best of them, so n_boxes counts instances; the union mask is the same either way; 1.0 keeps every box."""
    near_left = (0.26, 0.5, 0.25, 0.5)  # IoU with LEFT ~0.92
    boxes = ((LEFT, 3.0), (near_left, 2.5), (RIGHT, 2.0))
    samples = make_samples(tmp_path, sizes=((32, 32),))
    counts = {}
    for iou in (0.8, 1.0):
        settings = grounded_settings(tiny, cache_dir=str(tmp_path / f"cache{iou}"), nms_iou=iou)
        seg = planted(choose_segmenter("groundedsam", samples, catalog, settings), boxes)
        mask = np.asarray(seg.masks(samples, [0], ["cat"])[0]) > 0
        assert mask[16, 8] and mask[16, 24]
        counts[iou] = seg.last_info[0]["n_boxes"]
        assert seg.describe()["nms_iou"] == iou
    assert counts == {0.8: 2, 1.0: 3}
    with pytest.raises(ValueError, match="nms_iou"):
        choose_segmenter("groundedsam", samples, catalog, grounded_settings(tiny, nms_iou=0.0))


def test_auto_attribution_stops_when_its_segmenter_fails(openclip_dir, tiny, tmp_path):
    """A maskless task attributed only for GroundedSAM's masks: when the segmenter cannot load, CCI stops at the
    first batch instead of running over the whole task for a diagnosis that is withdrawn anyway."""
    images = make_image_folder(tmp_path / "imgs", per_class=4)
    plain = write_task_yaml(tmp_path / "p.yaml", "toy/plain", images)
    (tmp_path / "empty").mkdir()
    broken = {**tiny, "detector": str(tmp_path / "empty")}  # a folder without a checkpoint: loading fails
    res = _run(openclip_dir, broken, plain, tmp_path / "out", "--segmenter", "groundedsam", "--batch-size", "4")
    attribution = res["config"]["attribution"]
    assert attribution["status"] == "off" and attribution["reason"].startswith("auto: stopped after 0 image(s)")
    assert "groundedsam" in attribution["reason"]
    assert res["config"]["diagnosis"]["status"] == "skipped"
    log = [json.loads(line) for line in next((tmp_path / "out").rglob("*.samples.jsonl")).read_text().splitlines()]
    assert len(log) == 12 and not any("cci" in row for row in log)  # zero-shot results kept, no CCI at all
