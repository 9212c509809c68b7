"""Result records for tests: a valid classification record as the evaluator writes it, and a deadline that turns a
hang (a FIFO read) into a failure. Shared by the results, leaderboard, report and export tests."""

from __future__ import annotations

import signal
from contextlib import contextmanager


def valid_record(model: str = "demo/shapes-clean", task: str = "covar-shapes/original", acc1: float = 0.75) -> dict:
    """A result record as the evaluator writes it (every optional part present)."""
    return {
        "schema_version": 1,
        "model": {"spec": model, "name": model, "family": "demo", "target": None},
        "task": {
            "name": task,
            "version": 1,
            "n_samples": 8,
            "n_failed": 0,
            "n_classes": 4,
            "data_fingerprint": "abc",
            "headline": "acc1",
            "tags": ["demo"],
            "dataset": "generated",
        },
        "metrics": {
            "acc1": acc1,
            "acc5": None,
            "mean_per_class_recall": acc1,
            "fg_driven_rate": 0.5,
            "bg_er": 0.25,
            "fine_er": 0.5,
        },
        "intervals": {"acc1": [0.5, 0.9]},
        "config": {"batch_size": 4, "precision": "fp32", "seed": 0, "limit": None, "templates": ["a photo of a {}."]},
        "notes": ["a note\nover two lines"],
        "failed_files": [],
        "provenance": {
            "harness_version": "0",
            "python": "3.11",
            "torch": None,
            "device": "cpu",
            "started_at": "2024-01-01T00:00:00+00:00",
            "finished_at": "2024-01-01T00:00:01+00:00",
        },
    }


@contextmanager
def deadline(seconds: int = 10):
    """Fail instead of hanging (a FIFO read would block forever)."""

    def boom(*_):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
