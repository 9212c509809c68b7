"""Data-parallel pairs under torchrun (issue 16 item 1): 2 gloo/CPU ranks split each pair's batches, rank 0 merges
the ranks' part files into the one result, identical to a one-process run but for provenance; a rank that fails
fails the pair on every rank with the same one line."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from captions import make_captions_dataset, write_yaml
from covar_harness.catalog.registry import UsageError
from covar_harness.run.distributed import PairSync, SharedClassifiers, World, _merge_scalars, detect_world

TASKS = "covar-shapes/original,covar-shapes/hflip"


def _cli() -> str:
    found = shutil.which("covar-harness") or str(Path(sys.executable).with_name("covar-harness"))
    if not Path(found).exists():
        pytest.skip("the covar-harness script is not installed")
    return found


def _args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "run", "--models", "demo/shapes-clean", "--tasks", TASKS, "--data-dir", str(data), "--limit", "22",
        "--batch-size", "4", "--workers", "0", "--log-samples", "--output-dir", str(out),
        "--text-cache", str(cache), *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    # float sums depend on the thread count: torchrun gives each rank 1 thread, so the one-process run gets 1 too
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "250"}


def _results(out: Path) -> dict[str, tuple[dict, dict, bytes]]:
    found = {}
    for path in sorted(out.rglob("*.json")):
        obj = json.loads(path.read_text())
        found[path.name] = (obj, obj.pop("provenance"), path.with_name(path.stem + ".samples.jsonl").read_bytes())
    return found


def test_two_ranks_give_the_one_process_result(covar_shapes_data, tmp_path):
    cache = tmp_path / "text-cache"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python"]
    dist = subprocess.run(
        [*torchrun, _cli(), *_args(covar_shapes_data, tmp_path / "A", cache)],
        capture_output=True, text=True, env=_env(), timeout=240,
    )  # fmt: skip
    assert dist.returncode == 0, dist.stdout + dist.stderr
    assert len(list(cache.rglob("*.emb"))) == 1  # both tasks share class names and templates: one classifier
    single = subprocess.run(
        [_cli(), *_args(covar_shapes_data, tmp_path / "B", cache)], capture_output=True, text=True, env=_env()
    )
    assert single.returncode == 0, single.stderr

    a, b = _results(tmp_path / "A"), _results(tmp_path / "B")
    assert sorted(a) == sorted(b) == ["covar-shapes__hflip.json", "covar-shapes__original.json"]
    for name in a:
        (obj_a, prov_a, samples_a), (obj_b, prov_b, samples_b) = a[name], b[name]
        assert obj_a == obj_b and samples_a == samples_b  # metrics, intervals, config, the sample log: the same
        assert obj_a["config"]["attribution"]["status"] == "ran" and obj_a["task"]["n_samples"] == 22
        assert "distributed" not in prov_b
        ranks = prov_a["distributed"]["ranks"]
        assert prov_a["distributed"]["world_size"] == 2
        # 22 samples in batches of 4: rank 0 has batches 0, 2, 4 (12 samples), rank 1 batches 1, 3, 5 (10)
        assert ranks[0]["ranges"] == [[0, 4], [8, 12], [16, 20]] and ranks[0]["n_samples"] == 12
        assert ranks[1]["ranges"] == [[4, 8], [12, 16], [20, 22]] and ranks[1]["n_samples"] == 10
    leftovers = [p.name for p in (tmp_path / "A").rglob("*") if p.is_file() and ".part" in p.name]
    assert leftovers == []  # rank 0 removes every rank's part file and marker


def test_two_ranks_give_the_one_process_result_on_a_retrieval_task(openclip_dir, tmp_path):
    """A retrieval pair runs the one pass too: its batches are dealt to the ranks, the image embeddings and
    attribution records come back through the ranks' part files, and rank 0's recall, sample log and attribution
    equal a one-process run's."""
    task = write_yaml(tmp_path / "toy.yaml", make_captions_dataset(tmp_path / "data", n_images=10))

    def args(out: Path) -> list[str]:
        return [
            "run", "--models", f"openclip:local-dir:{openclip_dir}", "--tasks", str(task), "--batch-size", "3",
            "--workers", "0", "--device", "cpu", "--log-samples", "--output-dir", str(out), "--attribution", "cci",
            "--cci-k", "3",
        ]  # fmt: skip

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python"]
    dist = subprocess.run(
        [*torchrun, _cli(), *args(tmp_path / "A")], capture_output=True, text=True, env=_env(), timeout=240
    )
    assert dist.returncode == 0, dist.stdout + dist.stderr
    single = subprocess.run([_cli(), *args(tmp_path / "B")], capture_output=True, text=True, env=_env())
    assert single.returncode == 0, single.stderr
    (obj_a, prov_a, log_a), (obj_b, _, log_b) = (_results(tmp_path / x)["toy__retrieval.json"] for x in "AB")
    assert obj_a == obj_b and log_a == log_b
    assert obj_a["task"]["n_samples"] == 10 and obj_a["config"]["attribution"]["summary"]["n_attributed"] == 10
    # 10 images in batches of 3: rank 0 has batches 0 and 2, rank 1 batches 1 and 3
    ranks = prov_a["distributed"]["ranks"]
    assert [r["ranges"] for r in ranks] == [[[0, 3], [6, 9]], [[3, 6], [9, 10]]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], ranks=(0, 1)) -> list[subprocess.Popen]:
    """The ranks of a 2-rank job started by hand, as Slurm's srun would (the launcher's environment variables)."""
    port = str(_free_port())
    env = {**_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return [
        subprocess.Popen([_cli(), *args], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, **pipes) for r in ranks
    ]


def test_a_failing_rank_fails_the_pair_on_every_rank_with_one_line(covar_shapes_data, tmp_path):
    """Rank 1 cannot write its part file (a folder stands in its place, as on a read-only or full disk): both ranks
    report the same line naming rank 1 and exit 1; no result file is written. Launched by hand, as Slurm's srun
    would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so each rank's exit code can be read."""
    out = tmp_path / "out"
    blocked = out / "demo__shapes-clean" / "covar-shapes__original.json.part.rank1of2"
    blocked.mkdir(parents=True)
    args = _args(covar_shapes_data, out, tmp_path / "cache", "--tasks", "covar-shapes/original", "--dist-timeout", "60")
    procs = _launch(args, ranks=(0, 1))
    done = [p.communicate(timeout=120) for p in procs]
    for p, (stdout, stderr) in zip(procs, done):
        assert p.returncode == 1, stdout + stderr
        error = "rank 1: OSError: part file covar-shapes__original.json.part.rank1of2: IsADirectoryError: "
        error += "Is a directory"
        assert f"1 pair(s) failed\n  {error}  (1 pair(s)" in stderr, stderr  # the same line on both ranks
        assert "Traceback" not in stderr
    assert not list(out.rglob("*.json"))


def test_a_rank_resumes_its_share_from_its_own_part_file(covar_shapes_data, tmp_path):
    """Rank 0 alone (rank 1 never came): its share goes to its part file, then the pair fails at --dist-timeout.
    Both ranks again: rank 0 resumes after its whole share, and the result is the one-process run's."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = _args(covar_shapes_data, out, cache, "--tasks", "covar-shapes/original")
    (alone,) = _launch([*args, "--dist-timeout", "2"], ranks=(0,))
    stdout, stderr = alone.communicate(timeout=120)
    assert alone.returncode == 1 and "rank 0: gave up waiting for the other ranks' shares" in stderr, stderr
    assert (out / "demo__shapes-clean" / "covar-shapes__original.json.part.rank0of2").is_file()

    procs = _launch(args)
    done = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], done
    assert "resuming covar-shapes/original after 12 sample(s)" in done[0][1]
    one = _args(covar_shapes_data, tmp_path / "B", cache, "--tasks", "covar-shapes/original")
    single = subprocess.run([_cli(), *one], capture_output=True, text=True, env=_env())
    assert single.returncode == 0, single.stderr
    name = "covar-shapes__original.json"
    (a, _, log_a), (b, _, log_b) = _results(out)[name], _results(tmp_path / "B")[name]
    assert a == b and log_a == log_b


def test_a_rank_waits_for_rank_0s_class_embeddings_and_never_builds_them(tmp_path):
    import torch

    W = torch.eye(3)
    answers = [None, None, W]  # rank 0 has not written the file yet, twice

    class Store:
        def load(self, classnames, templates):
            return answers.pop(0)

    class Adapter:
        def encode_texts(self, texts):
            raise AssertionError("rank 1 built the classifier")

    cache = SharedClassifiers(Adapter(), Store(), World(rank=1, world_size=2, timeout=30))
    assert cache.get(["a", "b", "c"], ["{}"], reporter=None) is W and answers == []


def test_a_rank_builds_the_classifier_itself_when_rank_0_could_not_store_it(tmp_path):
    import torch

    class Store:  # a text cache rank 0 could not write to
        def load(self, classnames, templates):
            return None

        def save(self, classnames, templates, W):
            pass  # fails quietly, as TextEmbeddingStore.save does on an OSError

    class Adapter:
        def encode_texts(self, texts):
            return torch.eye(2)[: len(texts)]

    part = tmp_path / "r.json.part"
    rank0, rank1 = (PairSync.of(World(r, 2, r, token="t", timeout=30), part) for r in (0, 1))
    rank0.ready()
    cache = SharedClassifiers(Adapter(), Store(), rank1.world)
    cache.sync = rank1
    assert torch.equal(cache.get(["a", "b"], ["{}"], reporter=None), torch.eye(2))


def test_a_rank_stops_waiting_when_another_rank_failed_or_at_the_deadline(tmp_path):
    from covar_harness.run.distributed import RankFailed, wait_for

    part = tmp_path / "r.json.part"
    rank0, rank1 = (PairSync.of(World(r, 2, r, token="t1", timeout=0.3), part) for r in (0, 1))
    late = r"^rank 0: gave up waiting for the other ranks' shares of r.json after 0.3 s \(--dist-timeout\)$"
    with pytest.raises(RankFailed, match=late):
        rank0.wait_shares()
    PairSync.of(World(1, 2, 1, token="old run"), part).fail("rank 1: ValueError: stale")  # an earlier run's
    rank0.check()  # another run's marker: not this run's failure
    rank1.fail("rank 1: ValueError: bad image")
    with pytest.raises(RankFailed, match=r"^rank 1: ValueError: bad image$"):
        wait_for(lambda: None, rank0.world, "anything", rank0.check)


def test_batches_are_dealt_round_robin_with_one_process_boundaries():
    worlds = [World(r, 3) for r in range(3)]
    shares = [w.own_batches(23, 4) for w in worlds]
    assert shares[0] == [[0, 1, 2, 3], [12, 13, 14, 15]] and shares[2][-1] == [20, 21, 22]
    assert sorted(i for s in shares for b in s for i in b) == list(range(23))
    assert worlds[1].own_batches(23, 4, skip=1) == [[16, 17, 18, 19]]  # resumed after its first batch
    assert World(1, 2, 1).device("cuda") == "cuda:1" and World(1, 2, 1).device("cuda:0") == "cuda:0"


@pytest.mark.parametrize(
    "env", [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "x"}, {"WORLD_SIZE": "0", "RANK": "0"}]
)
def test_a_bad_launcher_environment_is_one_usage_error(env):
    with pytest.raises(UsageError):
        detect_world(env)
    assert detect_world({}) == World()
    assert detect_world({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 4, 1)


def test_step_state_merges_counters_by_sum_and_other_values_by_first_change():
    initial = {"n_seen": 0, "status": "ran", "failed": None}
    ordered = [{"n_seen": 4, "status": "ran", "failed": None}, {"n_seen": 4, "status": "ran", "failed": "boom"}]
    finals = [{"n_seen": 12, "status": "ran", "failed": None}, {"n_seen": 10, "status": "ran", "failed": "boom"}]
    assert _merge_scalars(initial, ordered, finals) == {"n_seen": 22, "status": "ran", "failed": "boom"}


def test_a_share_that_cannot_be_merged_says_why(tmp_path):
    from covar_harness.run.distributed import _mismatch

    header = {"magic": "m", "model_fingerprint": "a", "classifier_sha256": "c"}
    path = tmp_path / "x.part.rank1of2"
    assert _mismatch(path, header) == "is missing"
    path.write_text(json.dumps({**header, "model_fingerprint": "b", "classifier_sha256": "d"}) + "\n")
    assert _mismatch(path, header) == "differs from rank 0 in classifier_sha256, model_fingerprint"
