"""A retrieval pair runs through the run's one pass over the images (``pair.image_pass``): its finished batches,
image embeddings and attribution records included, go to ``<result>.part``, and an interrupted pair goes on from
its last complete batch and ends with the result and sample log of an uninterrupted run."""

from __future__ import annotations

import json

import pytest

from captions import make_captions_dataset, write_yaml
from covar_harness.run.partfiles import part_path
from helpers import ZeroShotForwards
from helpers import run_cli_inprocess as cli


@pytest.fixture
def retrieval_task(tmp_path):
    data = make_captions_dataset(tmp_path / "data", n_images=10)  # batches of 2: 5 zero-shot forwards
    return write_yaml(tmp_path / "toy.yaml", data)


def _args(openclip_dir, task, out, *extra):
    return [
        "run", "--models", f"openclip:local-dir:{openclip_dir}", "--tasks", str(task), "--output-dir", str(out),
        "--workers", "0", "--device", "cpu", "--batch-size", "2", "--log-samples", "--attribution", "cci",
        "--cci-k", "3", "--checkpoint-every", "1", *extra,
    ]  # fmt: skip


def _result(out):
    path = next(out.rglob("toy__retrieval.json"))
    obj = json.loads(path.read_text())
    obj.pop("provenance")
    return obj, path.with_name("toy__retrieval.samples.jsonl").read_bytes(), path


@pytest.mark.parametrize("every", ["1", "10"])  # 10: the batches since the last append go on Ctrl-C
def test_an_interrupted_retrieval_pair_resumes_and_ends_as_an_uninterrupted_run(
    openclip_dir, retrieval_task, tmp_path, monkeypatch, every
):
    whole = tmp_path / "whole"
    assert cli(*_args(openclip_dir, retrieval_task, whole)).returncode == 0
    expected, expected_samples, _ = _result(whole)
    assert expected["config"]["attribution"]["status"] == "ran" and expected["task"]["n_samples"] == 10
    assert 0 < expected["metrics"]["image_retrieval_recall@1"] < 1  # recall over every image, not a stub

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        ZeroShotForwards(m, stop=4)  # Ctrl-C in the 4th batch: 3 batches (6 images) done
        r = cli(*_args(openclip_dir, retrieval_task, out, "--checkpoint-every", every))
    assert r.returncode == 130
    assert not list(out.rglob("*.json")) and len(list(out.rglob("*.part"))) == 1

    counter = ZeroShotForwards(monkeypatch)
    r = cli(*_args(openclip_dir, retrieval_task, out, "--checkpoint-every", every))
    assert r.returncode == 0, r.stderr
    assert counter.calls == 2  # batches 4 and 5 only: the first 6 images' embeddings come from the part file
    assert "resuming toy/retrieval after 6 sample(s)" in r.stdout + r.stderr
    result, samples, path = _result(out)
    assert result == expected and samples == expected_samples
    assert not part_path(path).exists()  # removed once the result is written
