"""Resumable long pairs: finished batches go to ``<result>.part``; an interrupted pair goes on from its last
complete batch and ends with the result of an uninterrupted run (issue 16 item 3). Every task kind runs the one
pass over the images, so a retrieval pair resumes too, its image embeddings restored with the other records."""

import json

import pytest

from captions import make_captions_dataset, write_yaml
from covar_harness.run.partfiles import part_path
from helpers import ZeroShotForwards, make_covar
from helpers import run_cli_inprocess as cli


@pytest.fixture
def covar_data(tmp_path):
    data = tmp_path / "data"
    make_covar(data / "covar", subsets=("original",), per_class=3)  # 9 images with masks: CCI and diagnosis run
    return data


def _args(openclip_dir, data, out, *extra):
    return [
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        "covar/original",
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--log-samples",
        "--text-cache",
        "none",
        "--cci-k",
        "3",
        "--checkpoint-every",
        "1",
        *extra,
    ]


def _retrieval_args(openclip_dir, task, out, *extra):
    return [
        "run", "--models", f"openclip:local-dir:{openclip_dir}", "--tasks", str(task), "--output-dir", str(out),
        "--workers", "0", "--batch-size", "2", "--log-samples", "--attribution", "cci", "--cci-k", "3",
        "--checkpoint-every", "1", *extra,
    ]  # fmt: skip


@pytest.fixture(params=["classification", "retrieval"])
def pair(request, openclip_dir, tmp_path):
    """(the kind, the stem of its result file, out folder + extra arguments -> the run's arguments): 5 batches."""
    if request.param == "retrieval":  # 10 images with 2-5 captions each
        task = write_yaml(tmp_path / "toy.yaml", make_captions_dataset(tmp_path / "captions", n_images=10))
        return "retrieval", "toy__retrieval", lambda out, *extra: _retrieval_args(openclip_dir, task, out, *extra)
    data = request.getfixturevalue("covar_data")
    return "classification", "covar__original", lambda out, *extra: _args(openclip_dir, data, out, *extra)


def _result(out, stem="covar__original"):
    path = next(out.rglob(f"{stem}.json"))
    obj = json.loads(path.read_text())
    obj.pop("provenance")
    return obj, path.with_name(f"{stem}.samples.jsonl").read_bytes(), path


@pytest.mark.parametrize("every", ["1", "2", "10"])  # 2 and 10: the batches since the last append go on Ctrl-C
def test_an_interrupted_pair_resumes_and_ends_as_an_uninterrupted_run(pair, tmp_path, monkeypatch, every):
    kind, stem, args = pair
    whole = tmp_path / "whole"
    assert cli(*args(whole)).returncode == 0
    expected, expected_samples, _ = _result(whole, stem)
    assert expected["config"]["attribution"]["status"] == "ran"
    if kind == "classification":
        assert "diagnosis" in expected["config"]
    else:  # recall over every image's embedding, the restored ones included
        assert expected["task"]["n_samples"] == 10 and 0 < expected["metrics"]["image_retrieval_recall@1"] < 1

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        ZeroShotForwards(m, stop=4)  # Ctrl-C in the 4th batch: 3 batches (6 samples) done
        r = cli(*args(out, "--checkpoint-every", every))
    assert r.returncode == 130
    assert not list(out.rglob("*.json")) and len(list(out.rglob("*.part"))) == 1

    counter = ZeroShotForwards(monkeypatch)
    r = cli(*args(out, "--checkpoint-every", every))
    assert r.returncode == 0, r.stderr
    assert counter.calls == 2  # batches 4 and 5 only
    assert "after 6 sample(s)" in r.stdout + r.stderr  # "resuming <task> after ..."
    result, samples, path = _result(out, stem)
    assert result == expected and samples == expected_samples
    assert not part_path(path).exists()  # removed once the result is written


def test_a_torn_tail_is_cut_off_and_other_settings_start_over(openclip_dir, covar_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        ZeroShotForwards(m, stop=3)
        assert cli(*_args(openclip_dir, covar_data, out)).returncode == 130
    part = next(out.rglob("*.part"))
    part.write_bytes(part.read_bytes() + b"\x10\0\0\0\0\0\0\0torn")  # a chunk cut short by a kill
    counter = ZeroShotForwards(monkeypatch)
    r = cli(*_args(openclip_dir, covar_data, out, "--seed", "1"))  # other settings: the part file is not used
    assert r.returncode == 0, r.stderr
    assert counter.calls == 5 and "other settings" in r.stderr

    whole = tmp_path / "whole"
    assert cli(*_args(openclip_dir, covar_data, whole, "--seed", "1")).returncode == 0
    assert _result(out)[:2] == _result(whole)[:2]


def test_a_torn_tail_keeps_the_complete_batches(openclip_dir, covar_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        ZeroShotForwards(m, stop=3)
        assert cli(*_args(openclip_dir, covar_data, out)).returncode == 130
    part = next(out.rglob("*.part"))
    part.write_bytes(part.read_bytes() + b"\x10\0\0\0\0\0\0\0torn")
    counter = ZeroShotForwards(monkeypatch)
    assert cli(*_args(openclip_dir, covar_data, out)).returncode == 0
    assert counter.calls == 3  # batches 3 to 5
    whole = tmp_path / "whole"
    assert cli(*_args(openclip_dir, covar_data, whole)).returncode == 0
    assert _result(out)[:2] == _result(whole)[:2]


def test_checkpoint_every_0_writes_no_part_file(openclip_dir, covar_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        ZeroShotForwards(m, stop=3)
        assert cli(*_args(openclip_dir, covar_data, out, "--checkpoint-every", "0")).returncode == 130
    assert not list(out.rglob("*.part"))
    assert cli(*_args(openclip_dir, covar_data, out, "--checkpoint-every", "-1")).returncode == 2


def test_a_part_file_not_written_by_this_users_harness_is_never_unpickled(
    openclip_dir, covar_data, tmp_path, monkeypatch
):
    """A planted part file (valid header, a pickle that would run code) fails the HMAC check: the pair starts over
    and nothing is executed. So does an honest part file read under another user's key."""
    import hashlib
    import pickle
    import struct

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        ZeroShotForwards(m, stop=3)
        assert cli(*_args(openclip_dir, covar_data, out)).returncode == 130
    part = next(out.rglob("*.part"))
    header = part.read_bytes().split(b"\n", 1)[0] + b"\n"
    canary = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (canary.write_text, ("pwned",))

    payload = pickle.dumps(Evil())
    part.write_bytes(header + struct.pack("<Q32s", len(payload), hashlib.sha256(payload).digest()) + payload)
    counter = ZeroShotForwards(monkeypatch)
    assert cli(*_args(openclip_dir, covar_data, out)).returncode == 0
    assert not canary.exists() and counter.calls == 5  # started over

    other = tmp_path / "other"
    with monkeypatch.context() as m:
        ZeroShotForwards(m, stop=3)
        assert cli(*_args(openclip_dir, covar_data, other)).returncode == 130
    monkeypatch.setenv("COVAR_HARNESS_PART_KEY", str(tmp_path / "another-user.key"))
    counter = ZeroShotForwards(monkeypatch)
    assert cli(*_args(openclip_dir, covar_data, other)).returncode == 0
    assert counter.calls == 5
