"""The curve protocols (``faithfulness --protocol``), each against a literal port of its reference's loop on the
planted toy (64 x 64 pixels, an 8 x 8 patch grid): the images the model is shown at every point, the points'
fractions, the score and the AUC.

- grad-eclip: ``imagenet_eval_deletion.py`` / ``_insertion.py`` of Cyang-Zhao/Grad-Eclip (L = 100 steps of
  int(area / 200) pixels, every 10th scored; random colours; insertion from black; top-1 accuracy on the label).
- rise: ``CausalMetric`` of eclique/RISE (one image row of pixels per step; deletion to zeros, insertion from the
  gkern(11, 5) blur; the softmax probability of the class predicted on the untouched image; their ``auc``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from covar_harness.attribution.patches import importance_order
from covar_harness.catalog.registry import UsageError
from covar_harness.faithfulness.curves import Scorer
from covar_harness.faithfulness.protocols import (
    PROTOCOLS,
    CurveInput,
    GradEclipCurves,
    RiseCurves,
    pixel_map,
    random_colours,
    rise_blur,
)
from covar_harness.faithfulness.settings import FaithfulnessSettings
from toy_vit import LAYOUTS, SIDE, TopLeftReader, layout

W = torch.eye(2)
SEEDS = [11, 12]


class Recording(TopLeftReader):
    """The planted toy, keeping every image it is shown."""

    def __init__(self):
        super().__init__()
        self.shown: list[torch.Tensor] = []

    def encode_images(self, pixels):
        self.shown.append(pixels.clone())
        return super().encode_images(pixels)


def inputs(adapter, scorer, maps):
    pixels = torch.stack([adapter.preprocess(layout(tl, seed=j)) for j, tl in enumerate(LAYOUTS[:2])])
    order = importance_order(maps, SEEDS)
    return CurveInput(adapter, pixels, maps, order, SEEDS, True, scorer, 16, "blur", 8.0, False)


def maps() -> torch.Tensor:
    return torch.stack([TopLeftReader.top_left().float(), torch.rand(64, generator=torch.Generator().manual_seed(3))])


def test_grad_eclip_protocol_follows_the_authors_loop():
    adapter = Recording()
    labels = torch.tensor([0, 1])
    inp = inputs(adapter, Scorer(W, labels, "top1"), maps())
    curves = GradEclipCurves().curves(inp)[""]
    deletion_shown, insertion_shown = (x.view(2, 11, 3, SIDE, SIDE) for x in adapter.shown)
    area = SIDE * SIDE
    once = max(1, int(area / (2 * 100)))  # their pixel_once, L = 100
    order = importance_order(pixel_map(adapter, inp.maps, (SIDE, SIDE)), SEEDS)
    colours = random_colours(adapter, inp.pixels, SEEDS)
    black = torch.zeros_like(inp.pixels)  # the toy's preprocessing is /255, no normalisation
    for b in range(2):
        image, inserted = inp.pixels[b].clone().view(3, -1), black[b].clone().view(3, -1)
        deleted_points, inserted_points = [image.clone()], []
        for step in range(1, 101):  # their delection_process / insertion_process
            coords = order[b, (step - 1) * once : step * once]
            image[:, coords] = colours[b].view(3, -1)[:, coords]
            inserted[:, coords] = inp.pixels[b].view(3, -1)[:, coords]
            if step % 10 == 0:
                deleted_points.append(image.clone())
                inserted_points.append(inserted.clone())
        inserted_points.append(inp.pixels[b].view(3, -1))  # their last insertion point: the untouched image
        assert torch.equal(deletion_shown[b].flatten(2), torch.stack(deleted_points))
        assert torch.equal(insertion_shown[b].flatten(2), torch.stack(inserted_points))
    # points: 0, 10 * once, ..., 100 * once pixels deleted; 10 * once, ..., 100 * once, every pixel inserted
    assert curves.x_deletion.tolist() == [k * 10 * once / area for k in range(11)]
    assert curves.x_insertion.tolist() == [k * 10 * once / area for k in range(1, 11)] + [1.0]
    # each point: top-1 accuracy on the label; the AUC is the mean of the 11 points
    for shown, curve in ((deletion_shown, curves.deletion), (insertion_shown, curves.insertion)):
        logits = TopLeftReader.encode_images(adapter, shown.flatten(0, 1)).view(2, 11, 2) @ W
        assert curve.tolist() == (logits.argmax(-1) == labels[:, None]).float().tolist()
    d_auc, i_auc = curves.aucs()
    assert np.allclose(d_auc, curves.deletion.mean(axis=1)) and np.allclose(i_auc, curves.insertion.mean(axis=1))
    # uniform random colours, 0..254 per channel (their rand * 255 written into uint8)
    levels = colours * 255
    assert torch.allclose(levels, levels.round()) and levels.max() <= 254 and levels.min() >= 0
    assert torch.equal(random_colours(adapter, inp.pixels, SEEDS), colours)  # seeded per image


def _rise_gkern(klen, nsig):
    """RISE's gkern, verbatim."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    kern[0, 0] = k
    kern[1, 1] = k
    kern[2, 2] = k
    return torch.from_numpy(kern.astype("float32"))


def test_rise_protocol_follows_the_causal_metric():
    adapter = Recording()
    pixels = torch.stack([adapter.preprocess(layout(tl, seed=j)) for j, tl in enumerate(LAYOUTS[:2])])
    emb = TopLeftReader.encode_images(adapter, pixels)
    pred = (torch.nn.functional.normalize(emb, dim=-1) @ W).argmax(-1)
    inp = inputs(adapter, Scorer(W, pred, "softmax", 14.8), maps())
    curves = RiseCurves().curves(inp)[""]
    step, n_steps = SIDE, SIDE  # one row of pixels per step, as 224 at 224 x 224
    deletion_shown, insertion_shown = (x.view(2, n_steps + 1, 3, SIDE, SIDE) for x in adapter.shown)
    order = importance_order(pixel_map(adapter, inp.maps, (SIDE, SIDE)), SEEDS)
    blurred = torch.nn.functional.conv2d(inp.pixels, _rise_gkern(11, 5), padding=11 // 2)
    assert torch.allclose(rise_blur(inp.pixels, 11, 5), blurred)
    for shown, begin, finish in ((deletion_shown, inp.pixels, torch.zeros_like(inp.pixels)),
                                 (insertion_shown, blurred, inp.pixels)):  # fmt: skip
        start = begin.clone().view(2, 3, -1)
        for i in range(n_steps + 1):  # their CausalMetric.evaluate: score, then change the next step's pixels
            assert torch.allclose(shown[:, i].flatten(2), start)
            for b in range(2):
                coords = order[b, step * i : step * (i + 1)]
                start[b][:, coords] = finish[b].view(3, -1)[:, coords]
    # the score: the softmax probability of the class predicted on the untouched image; their normalised auc
    probs = (14.8 * torch.nn.functional.normalize(emb, dim=-1) @ W).softmax(-1)
    assert np.allclose(curves.deletion[:, 0], probs.max(-1).values.numpy(), atol=1e-6)
    assert np.allclose(curves.insertion[:, -1], probs.max(-1).values.numpy(), atol=1e-6)
    d_auc, _ = curves.aucs()
    theirs = (curves.deletion.sum(1) - curves.deletion[:, 0] / 2 - curves.deletion[:, -1] / 2) / n_steps
    assert np.allclose(d_auc, theirs)


def test_protocol_settings_are_fixed_and_recorded():
    """A published protocol sets score, target and token removal itself, refuses --steps / --replacement and a
    clashing --score / --target in one line, and records what it is; the default is the harness's own."""
    assert set(PROTOCOLS) == {"patches", "grad-eclip", "rise"} and FaithfulnessSettings().protocol == "patches"
    ge = FaithfulnessSettings.for_protocol("grad-eclip", target="label", seed=3)
    assert (ge.score, ge.target, ge.token_removal, ge.seed) == ("top1", "label", False, 3)
    record = ge.record()
    assert record["protocol"] == "grad-eclip" and record["steps"] == 10 and "random colours" in record["replacement"]
    assert FaithfulnessSettings.for_protocol("rise").record()["target"] == "pred"
    for protocol, given, flag in (("grad-eclip", {"steps": 8}, "--steps"), ("rise", {"target": "label"}, "--target"),
                                  ("grad-eclip", {"score": "cosine"}, "--score"),
                                  ("rise", {"replacement": "black"}, "--replacement")):  # fmt: skip
        with pytest.raises(UsageError, match=flag):
            FaithfulnessSettings.for_protocol(protocol, **given)
    with pytest.raises(UsageError, match="--protocol must be one of patches, grad-eclip, rise"):
        FaithfulnessSettings.for_protocol("deletion")
    with pytest.raises(UsageError, match="sets score"):
        FaithfulnessSettings(protocol="grad-eclip")  # by hand, without its fixed settings
    patches = FaithfulnessSettings.for_protocol("patches", steps=8, score="cosine").record()
    assert (patches["protocol"], patches["steps"], patches["replacement"]) == ("patches", 8, "blur")
