"""Per-model arguments (issue 18 item 5): ``--model-args k=v,...`` for every model, ``SPEC@k=v@k=v`` for one."""

from __future__ import annotations

import json

import pytest

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.models import args as model_args
from covar_harness.models.specs import resolve_models
from helpers import run_cli_inprocess


def test_parse_and_split():
    assert model_args.parse("precision=bf16, cache_dir=/data/hf") == {"precision": "bf16", "cache_dir": "/data/hf"}
    assert model_args.split_spec("openclip:ViT-B-32/openai@precision=bf16@device=cpu") == (
        "openclip:ViT-B-32/openai",
        {"precision": "bf16", "device": "cpu"},
    )
    assert model_args.split_spec("hf:/models/me@home/clip") == ("hf:/models/me@home/clip", {})  # '@' in a path
    assert model_args.split_spec("hf:/models/me@home/clip@precision=fp16")[1] == {"precision": "fp16"}
    with pytest.raises(UsageError, match="did you mean 'precision'"):
        model_args.parse("precison=bf16")
    with pytest.raises(UsageError, match="precision must be one of"):
        model_args.parse("precision=int8")
    with pytest.raises(UsageError, match="key=value"):
        model_args.parse("bf16")


def test_resolve_keeps_arguments_with_each_model():
    catalog = load_catalog()
    refs = resolve_models("demo@precision=bf16,demo/shapes-clean", catalog)
    specs = [r.spec for r in refs]
    assert specs == ["demo/shapes-clean@precision=bf16", "demo/shapes-shortcut@precision=bf16", "demo/shapes-clean"]
    assert refs[0].arguments == {"precision": "bf16"} and refs[2].arguments == {}
    assert refs[0].target == refs[2].target  # the same checkpoint, loaded with other settings


def test_run_records_and_resumes_per_model_arguments(tmp_path, covar_shapes_data):
    args = ["run", "--models", "demo/shapes-clean@precision=bf16,demo/shapes-clean", "--tasks",
            "covar-shapes/original", "--limit", "6", "--attribution", "none",
            "--output-dir", str(tmp_path)]  # fmt: skip
    out = run_cli_inprocess(*args)
    assert out.returncode == 0, out.stderr
    results = {json.loads(p.read_text())["model"]["spec"]: json.loads(p.read_text()) for p in tmp_path.rglob("*.json")}
    bf16, plain = results["demo/shapes-clean@precision=bf16"], results["demo/shapes-clean"]
    assert bf16["config"]["precision"] == "bf16" and bf16["model"]["args"] == {"precision": "bf16"}
    assert bf16["config"]["run_settings"]["model_args"] == {"precision": "bf16"}
    assert plain["config"]["precision"] == "fp32" and "args" not in plain["model"]
    assert "model_args" not in plain["config"]["run_settings"]
    again = run_cli_inprocess(*args)  # both pairs resume as done: per-model settings compared per model
    assert again.returncode == 0 and again.stdout.count("skipped") >= 2, again.stdout + again.stderr


def test_run_wide_model_args_and_errors(tmp_path, covar_shapes_data):
    out = run_cli_inprocess("run", "--models", "demo/shapes-clean", "--tasks", "covar-shapes/original", "--limit",
                            "4", "--attribution", "none", "--model-args", "precision=fp16",
                            "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert result["config"]["precision"] == "fp16" and result["model"]["args"] == {"precision": "fp16"}
    bad = run_cli_inprocess("run", "--models", "demo/shapes-clean@devise=cpu", "--tasks", "covar-shapes/original",
                            "--output-dir", str(tmp_path / "bad"))  # fmt: skip
    assert bad.returncode == 2 and "did you mean 'device'" in bad.stderr and "Traceback" not in bad.stderr
    gpu = run_cli_inprocess("run", "--models", "demo/shapes-clean@device=cuda:7", "--tasks", "covar-shapes/original",
                            "--output-dir", str(tmp_path / "gpu"))  # fmt: skip
    assert gpu.returncode == 2 and "cuda" in gpu.stderr  # checked before any model loads


def test_auto_device_asks_cuda_nothing_more_when_no_gpu_is_counted(monkeypatch):
    """``--device auto`` on a machine where NVML counts no GPU: ``cpu`` (or ``mps``) without the CUDA runtime
    query (``is_available`` initialises it); a counted GPU is still confirmed by ``is_available``."""
    import torch

    from covar_harness.models.specs import resolve_device

    def no_runtime_query():
        raise AssertionError("torch.cuda.is_available must not be asked when no GPU is counted")

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", no_runtime_query)
    assert resolve_device("auto") in ("cpu", "mps")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # counted, but the runtime cannot use it
    assert resolve_device("auto") in ("cpu", "mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
