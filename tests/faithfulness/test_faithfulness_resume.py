"""An interrupted ``covar-harness faithfulness`` resumes each pair from its part file (``<model>/<task>/curves.part``),
as a run does: the rerun forwards only the batches not finished, and ends with the files of an uninterrupted
command. The curve settings are part of what makes the part file valid: other settings start the pair over. A
retrieval pair opens as the run's (``open_task_pair``) and resumes the same way."""

from __future__ import annotations

import json
import re

import pytest

from captions import make_captions_dataset, write_yaml
from covar_harness.common.metrics import BOOTSTRAP_VERSION
from covar_harness.faithfulness.step import CurveStep
from helpers import run_cli_inprocess


class Batches:
    """Counts the batches the faithfulness step is given (one per batch the pass forwards); Ctrl-C at ``stop``."""

    def __init__(self, monkeypatch, stop: int | None = None):
        self.calls, real = 0, CurveStep.process

        def process(step, batch):
            self.calls += 1
            if stop is not None and self.calls == stop:
                raise KeyboardInterrupt
            return real(step, batch)

        monkeypatch.setattr(CurveStep, "process", process)


def _outputs(out) -> dict[str, bytes]:
    """Every result and sample file of the output folder (the part file is gone once they are written)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.suffix in (".json", ".jsonl")}


@pytest.fixture(params=["classification", "retrieval"])
def command(request, tmp_path):
    """(out folder + extra flags -> the exit status of a faithfulness command, batches in the pair): batch size 1
    on the toy's 4 masked images, or 2 on 8 captioned images (tiny open_clip)."""
    base = ["--attributors", "occlusion", "--steps", "2", "--bootstrap", "20", "--device", "cpu", "--log-samples"]
    if request.param == "retrieval":
        openclip_dir = request.getfixturevalue("openclip_dir")
        task = write_yaml(tmp_path / "toy.yaml", make_captions_dataset(tmp_path / "captions", n_images=8))
        args = ["--models", f"openclip:local-dir:{openclip_dir}", "--tasks", str(task), "--batch-size", "2"]
    else:
        request.getfixturevalue("toy_catalog")
        task = request.getfixturevalue("masked_task")
        args = ["--models", "toy-topleft", "--tasks", str(task), "--batch-size", "1"]

    def run(out, *extra):
        proc = run_cli_inprocess("faithfulness", *args, *base, "--output-dir", str(out), *extra)
        return proc

    return run, 4


@pytest.mark.parametrize("every", ["1", "10"])  # 10: the batches since the last append are written on Ctrl-C
def test_an_interrupted_pair_resumes_and_ends_as_an_uninterrupted_command(command, tmp_path, monkeypatch, every):
    run, n_batches = command
    whole = tmp_path / "whole"
    assert run(whole).returncode == 0
    expected = _outputs(whole)
    assert any(name.endswith("occlusion.samples.jsonl") for name in expected)

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        Batches(m, stop=3)  # Ctrl-C in the 3rd batch: 2 finished
        r = run(out, "--checkpoint-every", every)
    assert r.returncode == 130
    assert not _outputs(out) and [p.name for p in out.rglob("*.part")] == ["curves.part"]

    counter = Batches(monkeypatch)
    r = run(out, "--checkpoint-every", every)
    assert r.returncode == 0, r.stderr
    assert counter.calls == n_batches - 2  # the unfinished batches only
    assert _outputs(out) == expected
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.lock"))


def test_other_curve_settings_start_the_pair_over(command, tmp_path, monkeypatch):
    run, n_batches = command
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        Batches(m, stop=3)
        assert run(out, "--checkpoint-every", "1").returncode == 130
    counter = Batches(monkeypatch)
    r = run(out, "--checkpoint-every", "1", "--replacement", "black")  # curves of other canvases: not reused
    assert r.returncode == 0, r.stderr
    assert counter.calls == n_batches and "other settings" in r.stderr
    whole = tmp_path / "whole"
    assert run(whole, "--replacement", "black").returncode == 0
    assert _outputs(out) == _outputs(whole)


def test_checkpoint_every_0_keeps_no_part_file_and_a_negative_one_is_refused(command, tmp_path, monkeypatch):
    run, _ = command
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        Batches(m, stop=3)
        assert run(out, "--checkpoint-every", "0").returncode == 130
    assert not list(out.rglob("*.part"))
    r = run(out, "--checkpoint-every", "-1")
    assert r.returncode == 2 and "--checkpoint-every" in r.stderr


def test_the_command_shows_progress_and_records_how_its_intervals_were_drawn(command, tmp_path):
    """Faithfulness is long work (every method's curves per image): its pass reports progress like a run's (a
    line per pair's images when stderr is a log, not a terminal); and each result says which bootstrap drew its
    intervals (``settings.bootstrap``), as a run's ``config.run_settings.bootstrap`` does."""

    run, n_batches = command
    proc = run(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\[0:00:\d\d\] .+: \d+ to do$", proc.stderr, flags=re.M), proc.stderr
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("*.json")]
    assert results and {r["settings"]["bootstrap"] for r in results} == {BOOTSTRAP_VERSION}
