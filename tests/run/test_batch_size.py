"""``--batch-size auto`` (issue 16, GPU defaults): the largest batch that fits, probed once per model on CUDA.

No GPU here: the probe's out-of-memory answers are planted (the adapter raises torch.cuda.OutOfMemoryError above
a size), and the device is a ``torch.device("cuda")`` object, which needs no GPU to exist.
"""

from __future__ import annotations

import json
from argparse import ArgumentTypeError

import pytest
import torch

import covar_harness
from covar_harness.run import batch_size
from helpers import TINY_OPENCLIP_CFG, make_openclip_dir, run_cli_inprocess


def test_flag_values():
    assert batch_size.batch_size_value("auto") == "auto" and batch_size.batch_size_value(" AUTO ") == "auto"
    assert batch_size.batch_size_value("16") == 16
    for bad in ("0", "-3", "big"):
        with pytest.raises(ArgumentTypeError):
            batch_size.batch_size_value(bad)


def test_bad_flag_is_one_line_exit_2(tmp_path):
    out = run_cli_inprocess("run", "--models", "demo/shapes-clean", "--tasks", "covar-shapes/original",
                            "--batch-size", "0", "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 2 and "--batch-size" in out.stderr and "Traceback" not in out.stderr


def oom_above(limit: int):
    def run(size: int) -> None:
        if size > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return run


def test_largest_fitting_stops_at_the_first_out_of_memory():
    assert batch_size.largest_fitting(oom_above(100))[0] == 64
    best, tried = batch_size.largest_fitting(oom_above(300))
    assert best == 256 and tried[-1] == [512, "out of memory"] and [1024, "ok"] not in tried
    assert batch_size.largest_fitting(oom_above(1))[0] is None
    with pytest.raises(ValueError):  # anything but running out of memory is a real error
        batch_size.largest_fitting(lambda size: (_ for _ in ()).throw(ValueError("broken")))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    path = make_openclip_dir(tmp_path_factory.mktemp("bs") / "m", TINY_OPENCLIP_CFG)
    return covar_harness.load_model(f"openclip:local-dir:{path}")


def test_probe_runs_the_real_heaviest_batch_on_cuda_and_picks_the_largest_fit(adapter, monkeypatch):
    seen = []
    real = adapter.encode_images_without

    def without(pixels, drop, **kw):  # the removal call: the heaviest part of a batch with attribution on
        seen.append(tuple(drop.shape))
        if pixels.shape[0] > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(pixels, drop, **kw)

    monkeypatch.setattr(adapter, "encode_images_without", without)
    size, record = batch_size.resolve(adapter, torch.device("cuda"), k=7)
    assert size == 16 and record["chosen"] == 16 and record["tried"][-1] == [32, "out of memory"]
    n = adapter.patch_grid[0] * adapter.patch_grid[1]
    assert (8, 10, n) in seen  # K + 3 patterns per image: clusters, the reference, two regions


def test_off_cuda_the_default_is_used_and_recorded(tmp_path, covar_shapes_data):
    size, record = batch_size.resolve(object(), torch.device("cpu"), k=7)
    assert size == batch_size.DEFAULT and "no memory probe" in record["why"]
    out = run_cli_inprocess("run", "--models", "demo/shapes-clean", "--tasks", "covar-shapes/original",
                            "--limit", "8", "--batch-size", "auto", "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    config = json.loads(next(tmp_path.rglob("*.json")).read_text())["config"]
    assert config["batch_size"] == 64 and config["batch_size_auto"]["chosen"] == 64
