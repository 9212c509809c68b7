"""No long silences (issue 25, new-user friction): a piped run announces every phase, says something at least
every interval while one lasts (a slow batch too), and gives the run's ETA; a terminal run has a "pair k of N"
bar; COVAR-Shapes generation announces itself."""

import io
import time
from types import SimpleNamespace

from covar_harness.run.progress import LineReporter


def _outcome(status="done"):
    return SimpleNamespace(model="m", task="t", status=status, metrics={"acc1": 0.5}, error="", headline="acc1")


def test_every_phase_is_announced_and_pairs_carry_the_runs_eta():
    stream = io.StringIO()
    reporter = LineReporter(stream, every_s=3600, total_pairs=3)
    reporter.done(reporter.task("loading [bold]m[/bold]", None))
    reporter.task("encoding class prompts", 30)
    reporter.pair_done(_outcome())
    reporter.pair_done(_outcome("failed"))
    reporter.pair_done(_outcome())
    reporter.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("loading m ...") and lines[1].endswith("encoding class prompts: 30 to do")
    assert "pair 1/3" in lines[2] and "(eta " in lines[2] and "(eta " in lines[3]
    assert "pair 3/3" in lines[4] and "eta" not in lines[4]  # nothing left


def test_a_phase_silent_longer_than_the_interval_still_prints():
    """The audit's case: a batch that takes minutes printed nothing (lines came only from advance())."""
    stream = io.StringIO()
    reporter = LineReporter(stream, every_s=0.2)
    handle = reporter.task("toy/slow", 10)
    reporter.advance(handle, 2)
    time.sleep(0.7)  # one long batch: no advance, no line from the loop
    reporter.close()
    beats = [line for line in stream.getvalue().splitlines() if "toy/slow: 2/10 in" in line]
    assert len(beats) >= 2


def test_the_heartbeat_is_quiet_between_phases_and_after_close():
    """Sibling: nothing is repeated once a phase is done or the run is over."""
    stream = io.StringIO()
    reporter = LineReporter(stream, every_s=0.1)
    reporter.done(reporter.task("loading m", None))
    time.sleep(0.4)
    assert len(stream.getvalue().splitlines()) == 1
    handle = reporter.task("toy/x", 4)
    reporter.close()
    reporter.advance(handle, 1)
    time.sleep(0.3)
    assert len(stream.getvalue().splitlines()) == 2


def test_covar_shapes_generation_announces_itself(tmp_path, capsys):
    from covar_harness_tasks import covar_shapes as cs

    cs.ensure_covar_shapes(tmp_path / "covar-shapes", quiet=False, per_class=1, workers=1)
    err = capsys.readouterr().err
    assert "covar-shapes: generating the benchmark into" in err and "covar-shapes: generated in" in err
    cs.ensure_covar_shapes(tmp_path / "covar-shapes", quiet=False, per_class=1, workers=1)
    assert "generating" not in capsys.readouterr().err  # present: nothing to say
