"""The Python API parses its options with ``run``'s own parser (issue 25 item 13): the audit's cases (table 2K)
raise UsageError before anything loads, and well-typed values mean what the flag means."""

from pathlib import Path

import pytest

import covar_harness
from covar_harness.api import run_arguments
from covar_harness.catalog.registry import UsageError


@pytest.mark.parametrize(
    "models, tasks, options, says",
    [
        (None, "t", {}, "models must be"),  # the audit's: TypeError before
        ("demo", [1, 2], {}, "tasks must be"),
        ("demo", "t", {"output_dir": 123}, "output_dir must be a string or path"),
        ("demo", "t", {"device": 123}, "device must be a string"),
        ("demo", "t", {"overwrite": "false"}, "overwrite must be True or False"),  # overwrote before
        ("demo", "t", {"log_samples": 1}, "log_samples must be True or False"),  # sibling
        ("demo", "t", {"limit": 2.5}, "--limit"),  # loaded the model, then failed the pair
        ("demo", "t", {"limit": True}, "limit must be a number"),  # sibling: a bool is not a count
        ("demo", "t", {"batch_size": -1}, "--batch-size"),
        ("demo", "t", {"precision": "fp8"}, "--precision"),  # sibling: choices checked as on the CLI
        ("demo", "t", {"include_path": {"a": 1}}, "include_path must be"),
    ],
)
def test_mistyped_options_raise_one_usage_error(models, tasks, options, says):
    with pytest.raises(UsageError, match=says):
        run_arguments(models, tasks, options)


def test_values_are_converted_as_the_cli_converts_them(tmp_path):
    args = run_arguments(
        ["demo/shapes-clean", "demo/shapes-shortcut"],
        "covar-shapes/hflip",
        {
            "limit": "5",  # the audit's: TypeError before
            "cci_k": "7",  # the audit's: "--cci-k must be >= 2 ..., got 7" before
            "include_path": str(tmp_path),  # the audit's: read character by character before
            "model_args": {"precision": "bf16"},  # the audit's: AttributeError before
            "output_dir": tmp_path / "out",
            "overwrite": True,
            "seed": -1,  # a negative number is a value, not a flag
            "segmenter_opt": ["box_threshold=0.3", "text_threshold=0.2"],
        },
    )
    assert args.models == "demo/shapes-clean,demo/shapes-shortcut" and args.tasks == "covar-shapes/hflip"
    assert args.limit == 5 and args.cci_k == 7 and args.seed == -1
    assert args.include_path == [str(tmp_path)]
    assert args.model_args == "precision=bf16" and args.output_dir == Path(tmp_path / "out")
    assert args.overwrite is True and args.segmenter_opt == ["box_threshold=0.3", "text_threshold=0.2"]
    defaults = run_arguments("demo", "t", {"overwrite": False, "limit": None})
    assert defaults.overwrite is False and defaults.limit is None


def test_evaluate_refuses_a_string_for_overwrite_and_keeps_the_result(tmp_path):
    result = tmp_path / "out" / "demo__shapes-clean" / "covar-shapes__hflip.json"
    result.parent.mkdir(parents=True)
    result.write_text('{"mine": 1}')
    with pytest.raises(UsageError, match="overwrite must be True or False"):
        covar_harness.evaluate(
            "demo/shapes-clean", "covar-shapes/hflip", output_dir=tmp_path / "out", overwrite="false"
        )
    assert result.read_text() == '{"mine": 1}'
