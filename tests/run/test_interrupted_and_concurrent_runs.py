"""Interrupted and concurrent runs lose nothing: part files have one writer and one sequence, corrupt or
non-regular cache files are a miss, result files never collide, resume compares the task, a killed run's locks and
temporary folders are no obstacle, and a model that returns NaN fails its pair with one line. Each case is one of
the reliability audit's (shared/research/reliability-audit.md) plus a sibling it did not list."""

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import yaml

from covar_harness.common.safe_files import slug
from covar_harness.results import files as results
from covar_harness.run.partfiles import pair_lock, part_path
from helpers import make_image_folder, write_task_yaml
from helpers import run_cli_inprocess as cli

HEAD = struct.Struct("<Q32s")


@pytest.fixture
def toy(tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=3)  # 9 images: 5 batches of 2
    return [write_task_yaml(tmp_path / f"t{i}.yaml", f"toy/t{i}", folder) for i in range(2)]


def _args(openclip_dir, tasks, out, *extra):
    return [
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        ",".join(map(str, tasks)),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--attribution",
        "none",
        "--text-cache",
        "none",
        "--checkpoint-every",
        "1",
        "--log-samples",
        *extra,
    ]


def _result(out, name="toy__t0"):
    path = next(out.rglob(f"{name}.json"))
    obj = json.loads(path.read_text())
    obj.pop("provenance")
    return obj, path.with_name(f"{name}.samples.jsonl").read_bytes()


def _interrupt_after(monkeypatch, calls: int) -> None:
    """Ctrl-C in zero-shot forward ``calls + 1``: ``calls`` batches are in the part file."""
    from covar_harness_plugins.openclip import OpenClipAdapter

    real, seen = OpenClipAdapter.encode_images, []

    def forward(adapter, pixels, **kw):
        seen.append(1)
        if len(seen) == calls + 1:
            raise KeyboardInterrupt
        return real(adapter, pixels, **kw)

    monkeypatch.setattr(OpenClipAdapter, "encode_images", forward)


def _split(data: bytes) -> tuple[bytes, list[bytes]]:
    """A part file as its header line and its chunks (head + payload each)."""
    header, _, rest = data.partition(b"\n")
    chunks = []
    while rest:
        size, _ = HEAD.unpack(rest[: HEAD.size])
        chunks.append(rest[: HEAD.size + size])
        rest = rest[HEAD.size + size :]
    return header + b"\n", chunks


@pytest.fixture
def reference(openclip_dir, toy, tmp_path):
    whole = tmp_path / "whole"
    assert cli(*_args(openclip_dir, toy[:1], whole)).returncode == 0
    return _result(whole)


@pytest.fixture
def interrupted(openclip_dir, toy, tmp_path, monkeypatch):
    """An output folder whose pair was stopped after 3 batches: (folder, its part file)."""
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        assert cli(*_args(openclip_dir, toy[:1], out)).returncode == 130
    (part,) = out.rglob("*.part")
    assert len(_split(part.read_bytes())[1]) == 3
    return out, part


# ---- item 1: one writer per part file, one sequence per writer --------------------------------------------
@pytest.mark.parametrize(
    "edit",
    [
        lambda h, c: h + c[0] + c[0] + c[1] + c[2],  # the audit's: a second writer's copy of the first chunk
        lambda h, c: h + c[0] + c[2] + c[1],  # sibling: two chunks swapped
        lambda h, c: h + c[0] + c[1] + c[2] + c[1],  # sibling: a repeated later chunk at the end
    ],
    ids=["repeated-first", "swapped", "repeated-last"],
)
def test_a_part_file_with_chunks_out_of_sequence_resumes_to_the_uninterrupted_result(
    openclip_dir, toy, reference, interrupted, edit
):
    out, part = interrupted
    header, chunks = _split(part.read_bytes())
    part.write_bytes(edit(header, chunks))
    r = cli(*_args(openclip_dir, toy[:1], out))
    assert r.returncode == 0, r.stderr
    assert "out of order" in r.stderr or "repeated" in r.stderr
    result, samples = _result(out)
    assert result["task"]["n_samples"] == 9
    assert (result, samples) == reference
    indices = [json.loads(line)["index"] for line in samples.splitlines()]
    assert indices == sorted(set(indices))


def test_a_chunk_from_another_writers_part_file_is_not_restored(openclip_dir, toy, reference, interrupted, tmp_path):
    """Sibling: a chunk of another run of the same pair (same settings, its own writer nonce) appended."""
    out, part = interrupted
    own_header, own = _split(part.read_bytes())
    head = json.loads(own_header)  # the file now belongs to another writer; its chunk is the first writer's
    head["writer"] = "0" * 16
    part.write_bytes(json.dumps(head).encode() + b"\n" + own[0])
    r = cli(*_args(openclip_dir, toy[:1], out))
    assert r.returncode == 0, r.stderr
    assert "another writer" in r.stderr
    assert _result(out) == reference


def test_a_pair_another_process_holds_fails_with_one_line_and_the_run_goes_on(openclip_dir, toy, tmp_path):
    out = tmp_path / "out"
    spec = f"openclip:local-dir:{openclip_dir}"
    held = part_path(results.result_path(out, spec, "toy/t0"))
    holder = subprocess.Popen(  # another process holding the pair's lock, as a concurrent run does
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from covar_harness.run.partfiles import pair_lock
                with pair_lock(Path({str(held)!r})):
                    print("held", flush=True)
                    sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        r = cli(*_args(openclip_dir, toy, out))
    finally:
        holder.communicate("", timeout=60)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if "another run" in line]
    assert lines and f"pid {holder.pid}" in lines[0]
    assert not (out / held.parent.name / "toy__t0.json").exists()
    assert next(out.rglob("toy__t1.json")).is_file()  # the other pair ran
    assert not list(out.rglob("*.part*"))
    r = cli(*_args(openclip_dir, toy, out))  # the holder has gone: the rerun does the pair
    assert r.returncode == 0, r.stderr
    assert next(out.rglob("toy__t0.json")).is_file()


def test_a_lock_left_by_a_killed_run_is_no_obstacle(openclip_dir, toy, reference, tmp_path):
    """Sibling: ``kill -9`` leaves the lock file; the kernel dropped the lock, so the next run takes it."""
    out = tmp_path / "out"
    lock = part_path(results.result_path(out, f"openclip:local-dir:{openclip_dir}", "toy/t0"))
    lock = lock.with_name(lock.name + ".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text("pid 999999 on gone")
    r = cli(*_args(openclip_dir, toy[:1], out))
    assert r.returncode == 0, r.stderr
    assert _result(out) == reference and not lock.exists()


def test_a_pair_finished_by_another_run_meanwhile_is_skipped(openclip_dir, toy, tmp_path, monkeypatch):
    """The second run planned the pair before the first wrote it: after taking the lock it finds the result."""
    from covar_harness.run import evaluator

    out = tmp_path / "out"
    assert cli(*_args(openclip_dir, toy[:1], out)).returncode == 0
    path = next(out.rglob("toy__t0.json"))
    before = path.read_bytes()
    real = evaluator._run_pair
    monkeypatch.setattr(evaluator, "_run_pair", lambda model, cfg, p, fresh=False: real(model, cfg, p, True))
    r = cli(*_args(openclip_dir, toy[:1], out, "--overwrite"))
    assert r.returncode == 0 and "another run finished it meanwhile" in r.stdout + r.stderr
    assert path.read_bytes() == before


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    from covar_harness.run.partfiles import PairBusy

    part = tmp_path / "r.json.part"
    with pair_lock(part):
        with pytest.raises(PairBusy, match=f"pid {os.getpid()}"):
            with pair_lock(part):
                pass
    with pair_lock(part):  # released
        pass
    assert not (tmp_path / "r.json.part.lock").exists()


# ---- item 6: a corrupt size field is a torn chunk / a cache miss -------------------------------------------
@pytest.mark.parametrize("size", [2**62, 2**64 - 1], ids=["2^62", "2^64-1"])
def test_a_chunk_claiming_more_bytes_than_the_file_holds_is_cut_off(openclip_dir, toy, reference, interrupted, size):
    out, part = interrupted
    header, chunks = _split(part.read_bytes())
    last = chunks[-1]
    chunks[-1] = struct.pack("<Q", size) + last[8:]
    part.write_bytes(header + b"".join(chunks))
    r = cli(*_args(openclip_dir, toy[:1], out))
    assert r.returncode == 0, r.stderr
    assert "resuming toy/t0 after 4 sample(s)" in r.stdout + r.stderr
    assert _result(out) == reference


def _cache_file(tmp_path, openclip_dir, toy):
    """A run that wrote the text cache: (cache folder, its one file, the arguments of a run into a new folder)."""
    cache = tmp_path / "cache"
    args = _args(openclip_dir, toy[:1], tmp_path / "o1")
    args[args.index("--text-cache") + 1] = str(cache)
    assert cli(*args).returncode == 0
    (emb,) = cache.rglob("*.emb")
    args[args.index("--output-dir") + 1] = str(tmp_path / "o2")
    return cache, emb, args


@pytest.mark.parametrize("foreign", [False, True], ids=["own-key", "foreign-key"])
def test_a_text_cache_header_with_a_huge_shape_is_a_miss(openclip_dir, toy, tmp_path, foreign):
    from covar_harness.run import text_cache

    cache, emb, args = _cache_file(tmp_path, openclip_dir, toy)
    data = emb.read_bytes()
    magic, rest = data[: len(text_cache.MAGIC)], data[len(text_cache.MAGIC) :]
    line, _, payload = rest.partition(b"\n")
    header = json.loads(line)
    header["shape"] = [2**40, header["shape"][1]]
    if foreign:
        header["key"] = "f" * 64
    emb.write_bytes(magic + json.dumps(header).encode() + b"\n" + payload)
    said = []
    for _ in range(2):  # the miss rebuilds and replaces the file: said once, not on every run
        r = cli(*args, "--overwrite")
        assert r.returncode == 0, r.stderr
        said.append(r.stderr.count("ignoring text-embedding cache file"))
        header_now = json.loads(emb.read_bytes()[len(text_cache.MAGIC) :].partition(b"\n")[0])
        assert header_now["shape"][0] < 2**20
    assert said == [1, 0]


# ---- item 11: a FIFO or a folder where a cache file belongs ------------------------------------------------
def test_a_fifo_in_the_part_file_place_starts_the_pair_over(openclip_dir, toy, reference, interrupted):
    out, part = interrupted
    part.unlink()
    os.mkfifo(part)
    r = cli(*_args(openclip_dir, toy[:1], out), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "not a regular file" in r.stderr and _result(out) == reference


def test_a_folder_in_the_part_file_place_does_not_fail_a_written_pair(openclip_dir, toy, reference, tmp_path):
    """Sibling (audit H8): the result is written and the pair is done, the folder left alone."""
    out = tmp_path / "out"
    part = part_path(results.result_path(out, f"openclip:local-dir:{openclip_dir}", "toy/t0"))
    part.mkdir(parents=True)
    r = cli(*_args(openclip_dir, toy[:1], out), timeout=120)
    assert r.returncode == 0, r.stderr
    assert _result(out) == reference and part.is_dir()


def test_a_fifo_in_the_text_cache_place_is_a_miss(openclip_dir, toy, tmp_path):
    cache, emb, args = _cache_file(tmp_path, openclip_dir, toy)
    emb.unlink()
    os.mkfifo(emb)
    r = cli(*args, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "FIFO" in r.stderr and emb.is_file()  # replaced by the rebuilt classifier


# ---- item 12: resume compares the task -----------------------------------------------------------------
def _edit_task(path, **changes):
    body = yaml.safe_load(path.read_text())
    body.update(changes)
    path.write_text(yaml.safe_dump(body, sort_keys=False))


@pytest.mark.parametrize(
    "change, named",
    [
        ({"templates": ["a picture of a {}."]}, "templates"),  # the audit's
        ({"classnames": ["cat", "dog", "goldfish"]}, "task_digest"),  # sibling: a class renamed
        ({"class_groups": {"cat": "pets", "dog": "pets"}}, "task_digest"),  # sibling: Fine-Er's groups
    ],
    ids=["templates", "classnames", "class_groups"],
)
def test_resume_refuses_a_result_made_with_another_task_definition(openclip_dir, toy, tmp_path, change, named):
    out = tmp_path / "out"
    _edit_task(toy[0], classnames=["cat", "dog", "fish"])
    assert cli(*_args(openclip_dir, toy[:1], out)).returncode == 0
    assert cli(*_args(openclip_dir, toy[:1], out)).returncode == 0  # unchanged: skipped
    before = next(out.rglob("toy__t0.json")).read_bytes()
    _edit_task(toy[0], **change)  # same task name and version
    r = cli(*_args(openclip_dir, toy[:1], out))
    assert r.returncode == 2 and named in r.stderr and "--overwrite" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert next(out.rglob("toy__t0.json")).read_bytes() == before


# ---- the README's report recipe: newly asked outputs are not "the same settings" ----------------------------
def test_a_rerun_asking_for_the_samples_log_writes_it_instead_of_skipping(openclip_dir, toy, tmp_path):
    out = tmp_path / "out"
    plain = [a for a in _args(openclip_dir, toy, out) if a != "--log-samples"]
    assert cli(*plain).returncode == 0
    assert not list(out.rglob("*.samples.jsonl"))
    dry = cli(*_args(openclip_dir, toy, out, "--dry-run"))
    assert dry.stdout.count("redone for its samples log") == 2, dry.stdout
    r = cli(*_args(openclip_dir, toy, out))
    assert r.returncode == 0, r.stderr
    assert "skipped" not in r.stdout and len(list(out.rglob("*.samples.jsonl"))) == 2
    r = cli(*_args(openclip_dir, toy, out))  # now everything asked for is there
    assert r.returncode == 0 and r.stdout.count("skipped") == 2


def test_missing_maps_redo_a_pair_whose_attribution_ran_only(tmp_path):
    """Sibling: ``--save-maps`` after the main job; a pair whose attribution was off makes no maps, so it is
    not redone for them."""
    from types import SimpleNamespace

    from covar_harness.run.plan import missing_outputs

    maps = tmp_path / "maps"
    options = SimpleNamespace(log_samples=False, steps=[SimpleNamespace(name="attribution", save_maps=maps)])
    path = tmp_path / "r" / "t.json"
    ran = {"config": {"attribution": {"status": "ran"}}}
    off = {"config": {"attribution": {"status": "off"}}}
    assert missing_outputs(path, ran, "m/x", "t/y", options) == ["its maps (--save-maps)"]
    assert missing_outputs(path, off, "m/x", "t/y", options) == []
    folder = maps / slug("m/x") / slug("t/y")
    folder.mkdir(parents=True)
    (folder / "000000_correct_a.png").write_bytes(b"png")
    assert missing_outputs(path, ran, "m/x", "t/y", options) == []


# ---- item 9: result file names ---------------------------------------------------------------------------
def test_the_audits_colliding_task_names_get_two_files():
    a, b = "col/a^}%#;%)%%&b", "col/a}:+}:}%+)@b"
    assert slug(a, digits=8) == slug(b, digits=8)  # the 32-bit collision the audit found
    assert slug(a) != slug(b)
    assert len(slug(a).rsplit("-", 1)[1]) == 16


def test_two_pairs_that_map_to_one_file_are_refused_before_anything_runs(openclip_dir, toy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = results.result_path
    monkeypatch.setattr(results, "result_path", lambda o, m, t: real(o, m, "toy/t0"))  # a forced collision
    r = cli(*_args(openclip_dir, toy, out))
    assert r.returncode == 2 and "map to one result file" in r.stderr
    assert not list(out.rglob("*.json"))


def test_a_result_under_its_earlier_8_digit_name_is_still_found(openclip_dir, tmp_path):
    """Sibling: files written before the longer hash are reused (same settings), not redone beside."""
    folder = make_image_folder(tmp_path / "imgs", per_class=2)
    task = write_task_yaml(tmp_path / "t.yaml", "toy/with space", folder)
    out = tmp_path / "out"
    args = _args(openclip_dir, [task], out)
    assert cli(*args).returncode == 0
    spec = f"openclip:local-dir:{openclip_dir}"
    new, old = results.result_path(out, spec, "toy/with space"), results.legacy_result_path(out, spec, "toy/with space")
    assert old is not None and new.is_file()
    old.parent.mkdir(parents=True, exist_ok=True)
    new.rename(old)
    results.samples_path(new).rename(results.samples_path(old))
    r = cli(*args)
    assert r.returncode == 0 and "skipped" in r.stdout
    assert not new.exists()


# ---- item 14: non-finite model outputs -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["encode_images", "encode_texts"])
def test_a_model_returning_nan_fails_the_pair_naming_the_output_and_the_run_goes_on(
    openclip_dir, toy, tmp_path, monkeypatch, method
):
    from covar_harness_plugins.openclip import OpenClipAdapter

    real, calls = getattr(OpenClipAdapter, method), []

    def broken(adapter, *args, **kw):
        out = real(adapter, *args, **kw)
        calls.append(1)
        if len(calls) == 1:  # the first pair's first call only
            out = out.clone()
            out[0, 0] = float("nan") if method == "encode_images" else float("inf")
        return out

    monkeypatch.setattr(OpenClipAdapter, method, broken)
    out = tmp_path / "out"
    r = cli(*_args(openclip_dir, toy, out))
    assert r.returncode == 1
    failed = [line for line in r.stderr.splitlines() if "NaN or inf" in line]
    assert failed and method in failed[0]
    assert not list(out.rglob("toy__t0.json")) and next(out.rglob("toy__t1.json")).is_file()


# ---- minor findings: SIGTERM, file modes -------------------------------------------------------------------
def test_sigterm_mid_pair_exits_143_with_one_line_and_the_rerun_resumes(openclip_dir, toy, reference, tmp_path):
    """The audit's case: SIGTERM exited 143 with no word; now it stops as Ctrl-C does, finished batches kept."""
    import signal

    from covar_harness_plugins.openclip import OpenClipAdapter

    out, real, calls = tmp_path / "out", OpenClipAdapter.encode_images, []

    def forward(adapter, pixels, **kw):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's time limit, mid-pair
        return real(adapter, pixels, **kw)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(OpenClipAdapter, "encode_images", forward)
        r = cli(*_args(openclip_dir, toy[:1], out))
    assert r.returncode == 143, r.stderr
    assert "covar-harness: terminated (SIGTERM); finished pairs are saved, rerun to resume" in r.stderr
    assert "Traceback" not in r.stderr and not list(out.rglob("*.tmp")) and not list(out.rglob("*.lock"))
    r = cli(*_args(openclip_dir, toy[:1], out))
    assert r.returncode == 0 and "resuming toy/t0 after 4 sample(s)" in r.stderr
    assert _result(out) == reference


def test_sigterm_during_report_leaves_no_temporary_folder(openclip_dir, toy, tmp_path, monkeypatch):
    """Sibling: another command than run; its temporary site folder is removed as on Ctrl-C."""
    import signal

    from covar_harness.leaderboard.report import site

    out = tmp_path / "out"
    assert cli(*_args(openclip_dir, toy[:1], out)).returncode == 0

    def killed(*args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached: the handler raises")

    monkeypatch.setattr(site, "_write", killed)
    r = cli("report", str(out), "--out", str(tmp_path / "site"))
    assert r.returncode == 143 and "terminated (SIGTERM)" in r.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".site")] == []


def test_result_files_and_the_site_follow_the_umask(openclip_dir, toy, tmp_path):
    """The audit's 1.56: results 0600 and the site root 0700 whatever the umask (mkstemp / mkdtemp)."""
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        assert cli(*_args(openclip_dir, toy[:1], out)).returncode == 0
        assert cli("report", str(out), "--out", str(tmp_path / "site")).returncode == 0
        assert cli("init-leaderboard", str(tmp_path / "board")).returncode == 0
    finally:
        os.umask(previous)
    result = next(out.rglob("toy__t0.json"))
    assert result.stat().st_mode & 0o777 == 0o644
    assert results.samples_path(result).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "site").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "board" / "leaderboard-ci.sh").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("kill", ["first", "second", "both"])
def test_two_concurrent_runs_killed_in_any_order_end_as_one_uninterrupted_run(openclip_dir, tmp_path, kill):
    """Done-when of issue 25: two runs of one pair on one output folder, each killed -9 (or not) mid-pair in
    either order, then a rerun: the result and sample log are those of one uninterrupted run, and a run that
    met the other's lock said so in one line."""
    import signal
    import time

    folder = make_image_folder(tmp_path / "imgs", per_class=20)  # 60 images: 30 batches of 2
    task = write_task_yaml(tmp_path / "t.yaml", "toy/t0", folder)
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert cli(*_args(openclip_dir, [task], whole)).returncode == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "covar_harness", *_args(openclip_dir, [task], out)]
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)]
    time.sleep(0.5)
    runs.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.stat().st_size > 4000 for p in out.rglob("*.part")):
        if all(r.poll() is not None for r in runs):
            break
        time.sleep(0.01)
    killed = [i for i in {"first": [0], "second": [1], "both": [1, 0]}[kill] if runs[i].poll() is None]
    for i in killed:
        os.killpg(runs[i].pid, signal.SIGKILL)
    assert killed  # mid-pair: the part file had chunks
    for r in runs:
        _, err = r.communicate(timeout=300)
        if r.returncode not in (0, -9):
            assert r.returncode == 1 and "another run" in err, err
    r = cli(*_args(openclip_dir, [task], out))
    assert r.returncode == 0, r.stderr
    assert _result(out) == _result(whole)
    assert not list(out.rglob("*.part*"))


def test_folders_left_by_a_killed_report_are_removed_by_the_next_and_live_ones_kept(tmp_path):
    """The audit's 1.66: ``kill -9`` during ``report`` left ``.site2.new-*`` for good. Sibling: a folder a live
    build holds (locked) is never taken, nor one younger than a minute."""
    import fcntl

    from covar_harness.leaderboard import generated_folders

    out, hour = tmp_path / "site2", 3600
    dead_new, dead_old = tmp_path / ".site2.new-abc", tmp_path / ".site2.old-def"
    live, young = tmp_path / ".site2.new-live", tmp_path / ".site2.new-young"
    for folder in (dead_new, dead_old, live, young):
        (folder / "x").mkdir(parents=True)
    for folder in (dead_new, dead_old, live):
        os.utime(folder, (os.path.getmtime(folder) - hour, os.path.getmtime(folder) - hour))
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with generated_folders.building(out) as tmp:
            (tmp / "index.html").write_text("ok")
            generated_folders.swap_in(tmp, out)
    finally:
        os.close(fd)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".site2.new-live", ".site2.new-young", "site2"]
    assert (out / "index.html").read_text() == "ok"


def test_a_fifo_at_the_part_file_key_costs_resume_not_the_pair(openclip_dir, toy, reference, tmp_path):
    """Sibling of item 11: the key that signs part files is a cache file too; a FIFO there must not hang."""
    key = tmp_path / "part-file.key"
    os.mkfifo(key)
    r = cli(*_args(openclip_dir, toy[:1], tmp_path / "out"), env={"COVAR_HARNESS_PART_KEY": str(key)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "is a FIFO" in r.stderr and _result(tmp_path / "out") == reference
