"""Chefer's ``start_layer`` (their CLIP notebook's ``interpret(..., start_layer=-1)``): ``chefer`` uses every
block, ``chefer-last`` the notebook's default, the last block only. Scores linear in two blocks' attention
probabilities, so the gradients are known: s = <A1, W1> + <A2, W2>, cam_l = mean_heads(clamp(W_l * A_l, 0)), and
R = (I + cam2)(I + cam1) from block 0, I + cam2 from the last; the map is R's CLS row at the patches."""

from __future__ import annotations

import pytest
import torch

from covar_harness.attribution.attention_trace import Readout, Trace, cls_pool
from covar_harness.attribution.base import find_attributor
from covar_harness.attribution.chefer import Chefer, CheferLast, chefer_map
from covar_harness.attribution.settings import CCISettings
from covar_harness_plugins import cci as builtin_attributors  # noqa: F401 - registers the methods


def _two_blocks():
    g = torch.Generator().manual_seed(7)
    B, H, T, C = 2, 3, 5, 4
    probs = [torch.rand(B, H, T, T, generator=g).softmax(-1).requires_grad_(True) for _ in range(2)]
    weights = [torch.randn(B, H, T, T, generator=g) for _ in range(2)]
    s = sum((p * w).sum(dim=(1, 2, 3)) for p, w in zip(probs, weights))
    q = torch.randn(B, T, C, generator=g)
    trace = Trace(s, probs, q, Readout(q[:, 0], q, q, q, 0), cls_pool(q), 1)
    cams = [(w * p.detach()).clamp_min(0).mean(dim=1) for p, w in zip(probs, weights)]
    return trace, s, cams


def test_start_layer_by_hand():
    eye = torch.eye(5).expand(2, 5, 5)
    trace, s, (cam1, cam2) = _two_blocks()
    every = (eye + cam2) @ (eye + cam1)
    assert torch.allclose(chefer_map(trace, s), every[:, 0, 1:], atol=1e-6)
    trace, s, (cam1, cam2) = _two_blocks()
    assert torch.allclose(chefer_map(trace, s, start_layer=-1), (eye + cam2)[:, 0, 1:], atol=1e-6)
    trace, s, (cam1, cam2) = _two_blocks()
    assert torch.allclose(chefer_map(trace, s, start_layer=1), (eye + cam2)[:, 0, 1:], atol=1e-6)
    with pytest.raises(ValueError, match="start_layer 2: the model has 2 traced blocks"):
        chefer_map(*_two_blocks()[:2], start_layer=2)


def test_chefer_last_is_registered_and_recorded():
    assert find_attributor("chefer-last") is CheferLast and find_attributor("chefer") is Chefer
    assert (Chefer.start_layer, CheferLast.start_layer) == (0, -1)
    assert CheferLast().config(None, CCISettings()) == {"chefer": {"start_layer": -1}}
    assert Chefer().config(None, CCISettings()) == {"chefer": {"start_layer": 0}}
