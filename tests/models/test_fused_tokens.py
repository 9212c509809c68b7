"""The zero-shot forward also gives CCI its patch tokens (issue 16, one pass fewer per batch).

Oracle: the separate calls (``encode_images`` and ``patch_tokens``) must give bit-identical numbers, and a run with
the fused pass must write exactly the result of a run without it.
"""

from __future__ import annotations

import pytest
import torch

import covar_harness
from covar_harness.models import adapter as adapter_module
from helpers import TINY_OPENCLIP_CFG, make_openclip_dir, patch_everywhere


@pytest.mark.parametrize("layer", [-1, 0])
def test_fused_forward_equals_the_separate_calls(tmp_path, layer):
    path = make_openclip_dir(tmp_path / "m", TINY_OPENCLIP_CFG)
    adapter = covar_harness.load_model(f"openclip:local-dir:{path}")
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    emb, tokens = adapter.encode_images_with_tokens(pixels, layer=layer)
    assert torch.equal(emb, adapter.encode_images(pixels))
    assert torch.equal(tokens, adapter.patch_tokens(pixels, layer=layer))


def _run(monkeypatch, fused: bool) -> tuple[dict, int]:
    calls = {"patch_tokens": 0}
    cls = type(covar_harness.load_model("demo/shapes-clean"))
    real = cls.patch_tokens

    def counting(self, pixels, layer=-1):
        calls["patch_tokens"] += 1
        return real(self, pixels, layer)

    monkeypatch.setattr(cls, "patch_tokens", counting)
    if not fused:
        patch_everywhere(monkeypatch, adapter_module, "fuses_tokens", lambda obj, layer: False)
    out = covar_harness.evaluate("demo/shapes-clean", "covar-shapes/crop", limit=12, batch_size=4, log_samples=True)
    (record,) = out["results"]
    record.pop("provenance")
    return record, calls["patch_tokens"]


def test_a_run_with_the_fused_pass_writes_the_same_result_with_no_token_pass(monkeypatch, covar_shapes_data):
    fused, n_fused = _run(monkeypatch, fused=True)
    monkeypatch.undo()
    separate, n_separate = _run(monkeypatch, fused=False)
    assert n_fused == 0 and n_separate == 3  # 12 images in batches of 4: one token pass per batch saved
    assert fused == separate
