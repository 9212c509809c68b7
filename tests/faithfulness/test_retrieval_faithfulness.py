"""``covar-harness faithfulness`` on a retrieval task: attribution explains the paired caption. Each image's
explained text is the normalised mean of its captions' embeddings; the curves' full-image points are checked
against that similarity computed here independently, and the leaderboard renders the results. ``run
--attribution cci`` on a retrieval task explains the same caption sets (CCI's s checked the same way)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from captions import RECALL_NAMES, make_captions_dataset, write_yaml
from helpers import run_cli_inprocess


def independent_scores(spec: str, root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image files, (N, N) cosine of image i with image j's caption set, (N,) cosine of image i with its first
    caption), straight from the adapter: every image alone, each image's captions in one call, the set = the
    normalised mean of the normalised captions."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from covar_harness import load_model

    adapter = load_model(spec)
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines() if line.strip()]
    with torch.no_grad():
        images = [
            adapter.encode_images(adapter.preprocess(Image.open(root / r["file_name"]).convert("RGB"))[None])[0]
            for r in rows
        ]
        captions = [F.normalize(adapter.encode_texts(r["captions"]).float(), dim=-1) for r in rows]
    img = F.normalize(torch.stack(images).float(), dim=-1)
    sets = F.normalize(torch.stack([c.mean(dim=0) for c in captions]), dim=-1)
    first = (img * torch.stack([c[0] for c in captions])).sum(dim=-1)
    return [r["file_name"] for r in rows], (img @ sets.T).numpy(), first.numpy()


def _faithfulness(spec: str, task: Path, out: Path, *extra: str):
    return run_cli_inprocess(
        "faithfulness", "--models", spec, "--tasks", str(task), "--output-dir", str(out), "--attributors",
        "occlusion", "--steps", "3", "--bootstrap", "20", "--no-token-removal", "--device", "cpu",
        "--batch-size", "5", "--log-samples", *extra,
    )  # fmt: skip


def _rows(out: Path, method: str) -> tuple[dict, list[dict]]:
    (path,) = out.rglob(f"{method}.json")
    rows = [json.loads(line) for line in path.with_name(f"{method}.samples.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), rows


@pytest.fixture(scope="module")
def retrieval_task(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("retrieval-faith")
    data = make_captions_dataset(root / "data", n_images=7)
    return data, write_yaml(root / "toy.yaml", data)


def test_cosine_label_explains_the_paired_caption(openclip_dir, retrieval_task, tmp_path):
    data, task = retrieval_task
    spec, out = f"openclip:local-dir:{openclip_dir}", tmp_path / "faith"
    proc = _faithfulness(spec, task, out, "--score", "cosine", "--target", "label")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    files, cos, first = independent_scores(spec, data)
    for method in ("occlusion", "random"):
        result, rows = _rows(out, method)
        assert result["error"] is None and result["n_samples"] == 7 == len(rows)
        assert result["settings"]["explained_text"] == "paired_caption_mean"
        assert result["settings"]["score"] == "cosine" and result["settings"]["target"] == "label"
        assert result["pointing_energy"] is None  # no masks on a retrieval set
        assert [r["id"] for r in rows] == files
        for r in rows:
            assert r["label"] == r["target"] == r["index"]  # each image explains its own caption set
            own = cos[r["index"], r["index"]]
            assert r["deletion_curve"][0] == pytest.approx(own, abs=1e-5)  # nothing deleted: the full image
            assert r["insertion_curve"][-1] == pytest.approx(own, abs=1e-5)  # everything revealed
    # the check can tell: the first caption alone, or another image's caption set, scores differently
    assert np.abs(first - np.diag(cos)).max() > 1e-3 and np.abs(cos - np.diag(cos)[:, None]).max() > 1e-3
    md = run_cli_inprocess("leaderboard", str(out), "--format", "markdown")
    assert md.returncode == 0, md.stderr
    assert "faithfulness: toy/retrieval" in md.stdout
    occlusion = next(line for line in md.stdout.splitlines() if line.startswith("| occlusion"))
    assert f"{_rows(out, 'occlusion')[0]['deletion_auc']:.3f}" in occlusion
    assert run_cli_inprocess("validate", *map(str, out.rglob("occlusion.json"))).returncode == 0


def test_softmax_pred_explains_the_best_matching_caption_set(openclip_dir, retrieval_task, tmp_path):
    """``--target pred``: the image -> text top 1 among the pair's caption sets; ``--score softmax``: the softmax
    over those sets at the model's own logit scale (the retrieval softmax), recorded in the result."""
    data, task = retrieval_task
    spec, out = f"openclip:local-dir:{openclip_dir}", tmp_path / "faith"
    proc = _faithfulness(spec, task, out, "--score", "softmax", "--target", "pred")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    _, cos, _ = independent_scores(spec, data)
    result, rows = _rows(out, "occlusion")
    T = result["settings"]["temperature"]
    assert result["settings"]["temperature_from"] == "the model's logit scale" and T != 100.0
    probs = np.exp(T * (cos - cos.max(axis=1, keepdims=True)))
    probs /= probs.sum(axis=1, keepdims=True)
    assert [r["target"] for r in rows] == cos.argmax(axis=1).tolist()
    assert [r["label"] for r in rows] == list(range(7))
    for r in rows:
        assert r["deletion_curve"][0] == pytest.approx(probs[r["index"]].max(), abs=1e-4)


@pytest.mark.parametrize("target", ["label", "pred"])
def test_run_attribution_explains_the_paired_caption(openclip_dir, retrieval_task, tmp_path, target):
    """``run --attribution cci`` on a retrieval task: per image, CCI's s is the cosine with the explained caption
    set (its own under ``label``, the best-matching one under ``pred``), the other target's importances beside."""
    data, task = retrieval_task
    spec, out = f"openclip:local-dir:{openclip_dir}", tmp_path / "results"
    proc = run_cli_inprocess(
        "run", "--models", spec, "--tasks", str(task), "--output-dir", str(out), "--workers", "0", "--device",
        "cpu", "--attribution", "cci", "--cci-target", target, "--log-samples", "--batch-size", "3",
        "--save-maps", str(tmp_path / "maps"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (path,) = out.rglob("*.json")
    result = json.loads(path.read_text())
    _, cos, _ = independent_scores(spec, data)
    attribution = result["config"]["attribution"]
    assert attribution["status"] == "ran" and attribution["explained_text"] == "paired_caption_mean"
    assert attribution["summary"]["n_attributed"] == 7
    # the maps step runs after attribution on a retrieval pair too: one overlay per image
    assert result["config"]["maps"]["n_maps"] == 7 == len(list((tmp_path / "maps").rglob("*.png")))
    assert "diagnosis skipped: a retrieval task has no foreground masks or classes" in result["notes"]
    rows = [json.loads(x) for x in path.with_name(path.stem + ".samples.jsonl").read_text().splitlines()]
    other = "importance_pred" if target == "label" else "importance_label"
    for row in rows:
        i = row["index"]
        explained = i if target == "label" else int(cos[i].argmax())
        assert row["cci"]["target"] == explained
        assert row["cci"]["s"] == pytest.approx(cos[i, explained], abs=1e-4)
        assert len(row["cci"]["importance"]) == len(row["cci"][other]) == row["cci"]["k"]
    assert len(rows) == 7 and all("text_rank" in row for row in rows)  # the retrieval log, with cci added
    assert set(result["metrics"]) == set(RECALL_NAMES)
    assert run_cli_inprocess("validate", str(path)).returncode == 0


def test_unreadable_image_is_left_out_of_both_commands(openclip_dir, tmp_path):
    data = make_captions_dataset(tmp_path / "data", n_images=5)
    (data / "img" / "02.png").write_bytes(b"not a png")
    task, spec = write_yaml(tmp_path / "toy.yaml", data), f"openclip:local-dir:{openclip_dir}"
    proc = _faithfulness(spec, task, tmp_path / "faith", "--score", "cosine", "--target", "label")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result, rows = _rows(tmp_path / "faith", "occlusion")
    assert result["n_failed_images"] == 1 and [r["index"] for r in rows] == [0, 1, 3, 4]
    assert all(r["target"] == r["index"] for r in rows)
    out = tmp_path / "results"
    proc = run_cli_inprocess(
        "run", "--models", spec, "--tasks", str(task), "--output-dir", str(out), "--workers", "0", "--device",
        "cpu", "--attribution", "cci", "--cci-target", "label", "--log-samples",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (path,) = out.rglob("*.json")
    assert json.loads(path.read_text())["config"]["attribution"]["summary"]["n_attributed"] == 4
    rows = [json.loads(x) for x in path.with_name(path.stem + ".samples.jsonl").read_text().splitlines()]
    assert [(r["index"], r["cci"]["target"]) for r in rows] == [(0, 0), (1, 1), (3, 3), (4, 4)]  # as faithfulness
