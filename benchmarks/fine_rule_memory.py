"""Peak memory of the text-neighbours fine rule: the old full C x C similarity matrix and sort against the lazy
per-label top-k (``fine_rules.NearestClasses``), answering the same 200 error labels, in one run:

    python benchmarks/fine_rule_memory.py            # prints C, peak MiB old / new, their ratio, seconds
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from covar_harness.diagnosis.fine_rules import nearest_classes


def old_nearest(w: np.ndarray, k: int) -> list[frozenset[int]]:
    """The definition before issue 25: every class's neighbours from the full similarity matrix."""
    w = w / np.clip(np.linalg.norm(w, axis=0, keepdims=True), 1e-12, None)
    sims = w.T @ w
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, : min(k, len(sims) - 1)]
    return [frozenset(int(j) for j in row) for row in order]


def measure(fn, *args) -> tuple[float, float, object]:
    tracemalloc.start()
    started = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20, seconds, out


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'classes':>8} {'old MiB':>9} {'new MiB':>9} {'ratio':>7} {'old s':>7} {'new s':>7}")
    for n in (1000, 2000, 4000):
        w = rng.standard_normal((64, n))
        labels = rng.integers(0, n, size=200)
        old_mib, old_s, old = measure(old_nearest, w, 5)

        def lazy(w=w, labels=labels):
            found = nearest_classes(w, 5)
            return [found[int(a)] for a in labels]

        new_mib, new_s, new = measure(lazy)
        assert new == [old[int(a)] for a in labels]  # type: ignore[index]
        print(f"{n:>8} {old_mib:>9.1f} {new_mib:>9.1f} {old_mib / new_mib:>6.0f}x {old_s:>7.2f} {new_s:>7.2f}")


if __name__ == "__main__":
    main()
