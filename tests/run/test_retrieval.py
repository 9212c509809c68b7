"""Retrieval tasks: the ``retrieval`` format, recall@k against CLIP_benchmark's own computation, and the run's
result through validate and the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from captions import RECALL_NAMES, make_captions_dataset, write_yaml
from helpers import run_cli_inprocess


# ---- the oracle: CLIP_benchmark's zeroshot_retrieval, followed literally (unbatched, full score matrix) --------
def _cb_recall_at_k(scores, positive_pairs, k):
    import torch

    nb_texts, nb_images = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_indices_onehot = torch.nn.functional.one_hot(topk_indices, num_classes=nb_images)
    positive_pairs_reshaped = positive_pairs.view(nb_texts, 1, nb_images)
    nb_true_positive = (topk_indices_onehot * positive_pairs_reshaped).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def clip_benchmark_metrics(images_emb, texts_emb, texts_image_index, recall_k_list=(1, 5, 10)) -> dict:
    import torch

    scores = texts_emb @ images_emb.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    metrics = {}
    for k in recall_k_list:
        metrics[f"image_retrieval_recall@{k}"] = (_cb_recall_at_k(scores, positive_pairs, k) > 0).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (
            (_cb_recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean().item()
        )
    return metrics


def oracle_on_folder(spec: str, root: Path, skip: set[str] = frozenset()) -> dict:
    """The oracle's numbers for a captions.jsonl folder: every image and caption in one call each."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from covar_harness import load_model

    adapter = load_model(spec)
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["file_name"] not in skip]
    with torch.no_grad():
        pixels = torch.stack([adapter.preprocess(Image.open(root / r["file_name"]).convert("RGB")) for r in rows])
        images = F.normalize(adapter.encode_images(pixels).float(), dim=-1)
        texts = F.normalize(adapter.encode_texts([c for r in rows for c in r["captions"]]).float(), dim=-1)
    index = [i for i, r in enumerate(rows) for _ in r["captions"]]
    return clip_benchmark_metrics(images, texts, index)


def assert_same(ours: dict, theirs: dict) -> None:
    """The same six numbers, exactly: CLIP_benchmark averages in float32 (``.float().mean()``), we in float64."""
    assert set(theirs) <= set(ours)
    assert {k: float(np.float32(ours[k])) for k in theirs} == theirs


def _run(spec: str, yaml_path: Path, out: Path, *extra: str):
    return run_cli_inprocess(
        "run", "--models", spec, "--tasks", str(yaml_path), "--output-dir", str(out), "--workers", "0", *extra
    )


def test_run_matches_clip_benchmark_and_validates(openclip_dir, tmp_path):
    data = make_captions_dataset(tmp_path / "data")
    spec, out = f"openclip:local-dir:{openclip_dir}", tmp_path / "results"
    r = _run(spec, write_yaml(tmp_path / "toy.yaml", data), out, "--batch-size", "5", "--log-samples")
    assert r.returncode == 0, r.stderr + r.stdout
    (path,) = [p for p in out.rglob("*.json") if p.name != "samples.json"]
    result = json.loads(path.read_text())
    expected = oracle_on_folder(spec, data)
    assert_same(result["metrics"], expected)
    assert len(set(expected.values())) > 2  # a tiny random model: the numbers are not all 0 or 1
    assert result["task"]["kind"] == "retrieval" and result["task"]["n_samples"] == 12
    assert result["task"]["headline"] == "text_retrieval_recall@1"
    shown = f"{100 * result['metrics']['text_retrieval_recall@1']:.1f} text_retrieval_recall@1"
    assert shown in r.stdout  # the run summary shows the task's headline, not an absent acc1
    n_texts = sum(len(json.loads(x)["captions"]) for x in (data / "captions.jsonl").read_text().splitlines())
    assert result["task"]["n_texts"] == n_texts
    for name in RECALL_NAMES:
        low, high = result["intervals"][name]
        assert 0 <= low <= result["metrics"][name] <= high <= 1
    assert run_cli_inprocess("validate", str(path)).returncode == 0
    md = run_cli_inprocess("leaderboard", str(out), "--format", "markdown")
    assert md.returncode == 0 and "toy: headline metric" in md.stdout and "| retrieval |" in md.stdout, md.stderr
    assert f"{100 * result['metrics']['text_retrieval_recall@1']:.1f}" in md.stdout
    rows = json.loads(run_cli_inprocess("leaderboard", str(out), "--format", "json").stdout)["results"]
    assert {row["metric"] for row in rows} >= set(RECALL_NAMES)


def test_blocked_ranks_match_clip_benchmark_on_random_embeddings():
    """Many images, uneven caption counts, score blocks smaller than either side: the same six numbers."""
    import torch
    import torch.nn.functional as F

    from covar_harness.run.retrieval import Embeddings, recall_metrics, retrieval_hits

    gen = torch.Generator().manual_seed(3)
    counts = torch.randint(1, 6, (40,), generator=gen)
    index = torch.repeat_interleave(torch.arange(40), counts)
    images = F.normalize(torch.randn(40, 16, generator=gen), dim=-1)
    texts = F.normalize(images[index] + 1.2 * torch.randn(len(index), 16, generator=gen), dim=-1)
    emb = Embeddings(list(range(40)), images, texts, index, [], None)
    metrics, _ = recall_metrics(retrieval_hits(emb, block=7), index.numpy())
    expected = clip_benchmark_metrics(images, texts, index.tolist())
    assert_same(metrics, expected)
    assert 0 < expected["image_retrieval_recall@1"] < expected["image_retrieval_recall@10"] < 1


def test_corrupt_image_is_skipped_counted_and_its_captions_left_out(openclip_dir, tmp_path):
    data = make_captions_dataset(tmp_path / "data")
    (data / "img" / "03.png").write_bytes(b"not a png")
    spec, out = f"openclip:local-dir:{openclip_dir}", tmp_path / "results"
    r = _run(spec, write_yaml(tmp_path / "toy.yaml", data), out)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "skipped 1 unreadable image(s)" in r.stdout + r.stderr
    (path,) = list(out.rglob("*.json"))
    result = json.loads(path.read_text())
    assert result["task"]["n_samples"] == 11 and result["task"]["n_failed"] == 1
    assert result["failed_files"] == ["img/03.png"]
    expected = oracle_on_folder(spec, data, skip={"img/03.png"})
    assert_same(result["metrics"], expected)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"file_name": "img/00.png"}', "missing required key 'captions'"),
        ('{"file_name": "../x.png", "captions": ["a"]}', "'file_name' must be a relative path inside the dataset"),
        ('{"file_name": "img/01.png", "captions": []}', "'captions' must be a non-empty list of strings"),
    ],
)
def test_malformed_line_is_one_line_error_with_file_and_line(tmp_path, line, message):
    data = make_captions_dataset(tmp_path / "data", n_images=3)
    with (data / "captions.jsonl").open("a") as fh:
        fh.write(line + "\n")
    r = _run("demo/shapes-clean", write_yaml(tmp_path / "toy.yaml", data), tmp_path / "results")
    assert r.returncode == 2
    error = r.stderr.strip()
    assert len(error.splitlines()) == 1 and f"captions.jsonl:4: {message}" in error, error


def test_karpathy_layout_reads_the_split_and_missing_data_says_where_to_get_it(tmp_path):
    from covar_harness.catalog.plugin_manager import load_catalog
    from covar_harness_tasks.retrieval import load_retrieval

    root = tmp_path / "flickr"
    images = [
        {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a dog"}, {"raw": "a brown dog "}]},
        {"filename": "b.jpg", "split": "train", "sentences": [{"raw": "a cat"}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "sentences": [{"raw": "a boat"}]},
    ]
    root.mkdir()
    (root / "dataset_x.json").write_text(json.dumps({"images": images, "dataset": "x"}))
    ds = {"format": "retrieval", "path": str(root), "karpathy_json": "dataset_x.json", "images_dir": "imgs"}
    samples = load_retrieval(ds, tmp_path)
    assert [s.id for s in samples.samples] == ["imgs/a.jpg", "imgs/val2014/c.jpg"]
    assert samples.captions(0) == ["a dog", "a brown dog"]
    assert samples.fingerprint() != load_retrieval({**ds, "split": "train"}, tmp_path).fingerprint()
    cfg = load_catalog().tasks.get("retrieval/coco-karpathy-5k")
    assert cfg.dataset["format"] == "retrieval" and cfg.headline == "image_retrieval_recall@5"
    r = run_cli_inprocess(
        "run", "--models", "demo/shapes-clean", "--tasks", "retrieval/*", "--data-dir", str(tmp_path / "none")
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "caption_datasets.zip" in r.stderr and "retrieval/coco-karpathy-5k" in r.stderr


def test_ls_tasks_lists_the_retrieval_tasks():
    r = run_cli_inprocess("ls", "tasks")
    assert r.returncode == 0
    assert "retrieval/coco-karpathy-5k" in r.stdout and "retrieval/flickr30k-1k" in r.stdout


def test_validate_requires_the_recalls_of_a_retrieval_result():
    from covar_harness.results.validation import validate

    base = {
        "schema_version": 1,
        "model": {"spec": "m", "name": "m", "family": "f"},
        "task": {
            "name": "t",
            "kind": "retrieval",
            "version": 1,
            "n_samples": 3,
            "n_failed": 0,
            "n_classes": 0,
            "data_fingerprint": "x",
            "headline": "image_retrieval_recall@5",
        },
        "metrics": dict.fromkeys(RECALL_NAMES, 0.5),
        "config": {"batch_size": 1, "precision": "fp32", "seed": 0, "templates": []},
        "provenance": dict.fromkeys(("harness_version", "python", "torch", "device", "started_at", "finished_at"), "x"),
    }
    assert validate(base) == []
    bad = {**base, "metrics": {**base["metrics"], "text_retrieval_recall@10": 1.5}}
    assert any("text_retrieval_recall@10" in e for e in validate(bad))
    missing = {**base, "metrics": {k: v for k, v in base["metrics"].items() if k != "image_retrieval_recall@1"}}
    assert "metrics.image_retrieval_recall@1: missing" in validate(missing)
    classification = {**base, "task": {**base["task"], "kind": "classification"}}
    assert "metrics.acc1: missing" in validate(classification)


def test_hf_dataset_with_a_captions_column_gives_the_same_numbers(openclip_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    data = make_captions_dataset(tmp_path / "data", n_images=8)
    rows = [json.loads(line) for line in (data / "captions.jsonl").read_text().splitlines()]
    images = [Image.open(data / r["file_name"]).convert("RGB") for r in rows]
    features = datasets.Features({"img": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))})
    hf = datasets.Dataset.from_dict({"img": images, "caption": [r["captions"] for r in rows]}, features=features)
    hf.save_to_disk(str(tmp_path / "hfcopy"))
    spec = f"openclip:local-dir:{openclip_dir}"
    hf_yaml = write_yaml(
        tmp_path / "hf.yaml", tmp_path / "hfcopy", layout="hf", image_key="img", captions_key="caption"
    )
    results = []
    for name, task in (("hf", hf_yaml), ("jsonl", write_yaml(tmp_path / "jsonl.yaml", data))):
        r = _run(spec, task, tmp_path / name)
        assert r.returncode == 0, r.stderr + r.stdout
        (path,) = list((tmp_path / name).rglob("*.json"))
        results.append(json.loads(path.read_text()))
    assert (
        results[0]["metrics"] == results[1]["metrics"]
        and results[0]["task"]["n_texts"] == results[1]["task"]["n_texts"]
    )
    assert results[0]["task"]["dataset"].startswith("hf ")
    bad = write_yaml(tmp_path / "bad.yaml", tmp_path / "hfcopy", layout="hf", image_key="img")
    r = _run(spec, bad, tmp_path / "bad")
    assert "no column 'captions'; columns: img, caption" in r.stdout + r.stderr
