"""The scale-out flags of ``run`` (docs/scale-out.md): a sharded grid (``plan.shard_pairs``), the persistent
text-embedding cache (``text_cache.py``), resumable pairs (``partfiles.py``) and data-parallel pairs under
torchrun (``distributed.py``). Imports nothing: the CLI builds its parser from it."""

from __future__ import annotations


def add_scale_flags(ex) -> None:
    """Add ``--shard``, ``--text-cache``, ``--checkpoint-every`` and ``--dist-timeout`` to ``run``'s argument
    group ``ex``."""
    ex.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only shard I of N (0 <= I < N) of the model x task pairs; N jobs with I=0..N-1 cover the grid "
        "once (docs/scale-out.md)",
    )
    ex.add_argument(
        "--text-cache",
        default=None,
        metavar="DIR",
        help="class-text embeddings kept across runs (default: $COVAR_HARNESS_TEXT_CACHE or "
        "~/.cache/covar-harness/text-embeddings; none: off)",
    )
    add_checkpoint_flag(ex)
    ex.add_argument(
        "--dist-timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="under torchrun / accelerate launch: how long a rank waits for the others' shares of a pair (or "
        "rank 0's result) before the pair fails on every rank (default: 3600)",
    )


def add_checkpoint_flag(ex) -> None:
    """``--checkpoint-every``: ``run``'s and ``faithfulness``'s (both resume a pair from its part file)."""
    ex.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        metavar="N",
        help="append finished batches to the pair's .part file every N batches, so an interrupted pair resumes "
        "(default: 10; 0: off)",
    )
