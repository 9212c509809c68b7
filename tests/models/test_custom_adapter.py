"""``custom:`` adapters: a module or a file path plus a callable; device/precision passed when accepted; a bad
object rejected with one line listing exactly what it lacks; and an end-to-end run through the CLI."""

from __future__ import annotations

import json
import textwrap

import pytest

from covar_harness.catalog.registry import UsageError
from covar_harness.models.specs import load_model
from covar_harness.results import validation
from helpers import run_cli_inprocess

# A complete adapter with no weights: an image is its mean colour, a class name maps to a colour, so the
# classifier is right on the helpers' colour-coded image folder (cat red, dog green, fish blue).
ADAPTER_SOURCE = textwrap.dedent("""
    import torch
    import torchvision.transforms.functional as TF

    COLOURS = {"cat": (1.0, 0.1, 0.1), "dog": (0.1, 1.0, 0.1), "fish": (0.1, 0.1, 1.0)}
    CALLS = []

    class MeanColour:
        name = "mean-colour"
        family = "toy"

        def preprocess(self, image):
            return TF.to_tensor(image.convert("RGB").resize((8, 8)))

        def encode_images(self, pixels):
            return pixels.mean(dim=(2, 3))

        def encode_texts(self, texts):
            return torch.tensor([next(v for k, v in COLOURS.items() if k in t) for t in texts])

    def build(device="cpu", precision="fp32"):
        CALLS.append((device, precision))
        return MeanColour()

    def build_plain():
        return MeanColour()

    def build_kwargs(**options):
        CALLS.append(options)
        return MeanColour()

    class Half:
        name = "half"

        def encode_texts(self, texts):
            return None

    def broken():
        return Half()
""")


@pytest.fixture
def adapter_file(tmp_path):
    path = tmp_path / "my_models" / "colour_model.py"
    path.parent.mkdir()
    path.write_text(ADAPTER_SOURCE)
    return path


def test_file_spec_loads_and_receives_device_and_precision(adapter_file):
    adapter = load_model(f"custom:{adapter_file}:build", device="cpu", precision="bf16")
    assert adapter.name == "mean-colour"
    module = type(adapter).__module__
    import sys

    assert sys.modules[module].CALLS == [("cpu", "bf16")]
    load_model(f"custom:{adapter_file}:build_kwargs")
    assert sys.modules[module].CALLS[-1] == {"device": "cpu", "precision": "fp32"}
    assert load_model(f"custom:{adapter_file}:build_plain").name == "mean-colour"  # no kwargs: none passed


def test_module_spec_imports_from_the_path(adapter_file, monkeypatch):
    monkeypatch.syspath_prepend(str(adapter_file.parent))
    adapter = load_model("custom:colour_model:build")
    import colour_model

    assert isinstance(adapter, colour_model.MeanColour) and colour_model.CALLS == [("cpu", "fp32")]


def test_bad_object_gets_one_line_listing_exactly_what_is_missing(adapter_file):
    with pytest.raises(UsageError) as err:
        load_model(f"custom:{adapter_file}:broken")
    msg = str(err.value)
    assert "\n" not in msg and "returned a Half, not a ModelAdapter" in msg
    assert "`preprocess(image)" in msg and "`encode_images(pixels)" in msg
    assert "encode_texts" not in msg and "`name" not in msg


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("custom:no-colon-here", "cannot tell the module from the callable"),
        ("custom:{file}:nothing_here", "has no 'nothing_here'; callables there: .*build"),
        ("custom:{file}:COLOURS", "is a dict, not a callable"),
        ("custom:{dir}/missing.py:build", "no such file"),
        ("custom:no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_spec_errors_say_what_is_wrong(spec, expected, adapter_file):
    with pytest.raises(UsageError, match=expected):
        load_model(spec.format(file=adapter_file, dir=adapter_file.parent))


def test_custom_adapter_runs_end_to_end_through_the_cli(adapter_file, task_yaml, tmp_path):
    """A good and a bad custom model in one run: the good one writes a valid result, the bad one fails alone."""
    out = tmp_path / "out"
    models = f"custom:{adapter_file}:build,custom:{adapter_file}:broken"
    proc = run_cli_inprocess(
        "run",
        "--models",
        models,
        "--tasks",
        "toy/shapes",
        "--include-path",
        str(task_yaml),
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one pair failed, the other still ran
    assert "not a ModelAdapter: missing method `preprocess" in " ".join(proc.stderr.split())
    [path] = list(out.glob("*/*.json"))
    record = json.loads(path.read_text())
    assert validation.validate(record) == []
    assert record["model"]["name"] == "mean-colour" and record["model"]["family"] == "toy"
    assert record["metrics"]["acc1"] == 1.0 and record["task"]["n_samples"] == 12
