"""The gradient and attention baselines (issue 15 item 1): ``gradcam``, ``rollout``, ``chefer``, ``grad-eclip``.

Oracles: the traced forwards equal the models' own ``encode_image`` (open_clip from a JSON config, transformers
CLIP / SigLIP / SigLIP2); a planted ViT whose every token may only attend to the CLS token and the top-left
quarter (so its embedding reads nothing else); rollout of identity and uniform attention by hand; Grad-CAM of a
linear readout by hand. Plus: one traced call per batch, per-image independence, and the one-line refusal on
adapters without a trace.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from covar_harness.attribution import CCISettings
from covar_harness.attribution.attention_trace import Readout, Trace, attend, cls_pool, cls_readout
from covar_harness.attribution.chefer import Chefer
from covar_harness.attribution.grad_eclip import GradECLIP
from covar_harness.attribution.gradcam import GradCAM, gradcam_map
from covar_harness.attribution.rollout import Rollout, rollout_map
from covar_harness.faithfulness.importance import Unsupported, importance_maps
from covar_harness.models.specs import load_model
from covar_harness_plugins import cci as builtin_attributors  # noqa: F401 - registers the methods
from helpers import TINY_OPENCLIP_CFG, make_openclip_dir, run_cli_inprocess
from hf_helpers import tiny  # noqa: F401 - fixture
from toy_vit import GRID, LAYOUTS, TopLeftReader, layout

METHODS = {"gradcam": GradCAM, "rollout": Rollout, "chefer": Chefer, "grad-eclip": GradECLIP}
N = GRID * GRID


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the traced forwards equal the models' own -----------------------------------------------------------------
def test_openclip_trace_equals_encode_image(tmp_path):
    adapter = load_model(f"openclip:local-dir:{make_openclip_dir(tmp_path / 'vit')}")
    pixels = torch.randn(3, 3, 32, 32)
    trace = adapter.attention_trace(pixels)
    expected = adapter.model.encode_image(pixels)  # the library's own forward
    assert torch.allclose(trace.embedding, expected, atol=1e-5)
    heads = TINY_OPENCLIP_CFG["vision_cfg"]["width"] // TINY_OPENCLIP_CFG["vision_cfg"]["head_width"]
    assert [tuple(a.shape) for a in trace.attentions] == [(3, heads, 17, 17)] * 2
    assert torch.allclose(trace.attentions[0].sum(-1), torch.ones(3, heads, 17))
    assert trace.embedding.requires_grad and trace.n_prefix == 1


def test_openclip_avg_pool_tower_is_refused_in_one_line(tmp_path):
    cfg = json.loads(json.dumps(TINY_OPENCLIP_CFG))
    cfg["vision_cfg"]["pool_type"] = "avg"
    adapter = load_model(f"openclip:local-dir:{make_openclip_dir(tmp_path / 'avg', cfg)}")
    assert adapter.attention_trace is None
    ok, why = GradCAM.supported_by(adapter)
    assert not ok and "attention_trace" in why and "\n" not in why


@pytest.mark.parametrize("family", ["clip", "siglip", "siglip2"])
def test_hf_trace_equals_get_image_features(tiny, family):  # noqa: F811
    adapter = load_model(f"hf:{tiny[family]}")
    pixels = torch.randn(2, 3, 32, 32)
    trace = adapter.attention_trace(pixels)
    assert torch.allclose(trace.embedding, adapter.encode_images(pixels), atol=1e-5)
    assert trace.n_prefix == (1 if family == "clip" else 0)
    assert torch.allclose(trace.pool.sum(-1), torch.ones(2))  # the readout's weights over the tokens
    for name in METHODS:
        maps = importance_maps(name, adapter, pixels, *_inputs(adapter, pixels), [1, 2], CCISettings(k=4))
        assert maps.shape == (2, 64) and torch.isfinite(maps).all()


def _inputs(adapter, pixels):
    """(emb, text, target): the explained "class" is the batch's mean direction (a prototype). Not each image's
    own direction: cos is at its maximum there, so every gradient is 0."""
    emb = F.normalize(adapter.encode_images(pixels), dim=-1)
    text = F.normalize(emb.mean(dim=0, keepdim=True), dim=-1).expand_as(emb)
    return emb, text, torch.zeros(pixels.shape[0], dtype=torch.long)


# ---- a planted ViT that reads only the top-left quarter ------------------------------------------------------
class PlantedViT(TopLeftReader):
    """8x8 patches of a 64x64 image -> 2 pre-norm attention blocks (random weights) -> CLS -> projection. Every
    query may only attend to CLS and the top-left patches (an additive key mask), so the embedding is a function
    of the top-left pixels alone. Removal adds the dropped patches to the key mask."""

    name = "toy:planted-vit"
    C, HEADS, BLOCKS = 32, 4, 2

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = {
            "patch": torch.randn(3 * 64, self.C, generator=g) / 8,
            "cls": torch.randn(self.C, generator=g),
            "pos": torch.randn(N + 1, self.C, generator=g) * 0.1,
            "proj": torch.randn(self.C, 8, generator=g) / self.C**0.5,
        }
        for i in range(self.BLOCKS):
            for part in ("qkv", "out", "mlp"):
                width = 3 * self.C if part == "qkv" else self.C
                self.w[f"{part}{i}"] = torch.randn(self.C, width, generator=g) / self.C**0.5
        self.traces = 0

    def _tokens(self, pixels):
        patches = F.unfold(pixels.float(), 8, stride=8).transpose(1, 2)  # (B, N, 3*64), raster order
        cls = self.w["cls"].expand(pixels.shape[0], 1, self.C)
        return torch.cat([cls, patches @ self.w["patch"]], dim=1) + self.w["pos"]

    def _forward(self, pixels, drop=None):
        keep = torch.cat([torch.ones(1, dtype=torch.bool), self.top_left()])[None].expand(pixels.shape[0], -1)
        if drop is not None:
            keep = keep & torch.cat([torch.ones(drop.shape[0], 1, dtype=torch.bool), ~drop], dim=1)
        mask = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))[:, None, None, :]
        x, attentions, last_input, parts = self._tokens(pixels), [], None, None
        for i in range(self.BLOCKS):
            last_input = x
            q, k, v = (F.layer_norm(x, (self.C,)) @ self.w[f"qkv{i}"]).chunk(3, dim=-1)
            out, probs = attend(q, k, v, self.HEADS, mask)
            x = x + out @ self.w[f"out{i}"]
            x = x + torch.tanh(F.layer_norm(x, (self.C,)) @ self.w[f"mlp{i}"])
            attentions.append(probs)
            parts = (q, k, v, out)
        emb = F.layer_norm(x[:, 0], (self.C,)) @ self.w["proj"]
        return Trace(emb, attentions, last_input, cls_readout(*parts), cls_pool(x), 1)

    def encode_images(self, pixels):
        return self._forward(pixels).embedding.detach()

    def attention_trace(self, pixels):
        self.traces += 1
        return self._forward(pixels)

    def encode_images_without(self, pixels, drop):
        rows = drop.reshape(-1, N)
        reps = rows.shape[0] // pixels.shape[0]
        out = self._forward(pixels.repeat_interleave(reps, dim=0), rows).embedding.detach()
        return out.view(*drop.shape[:-1], -1)

    def encode_texts(self, texts):
        raise NotImplementedError


def planted_batch(adapter):
    return torch.stack([adapter.preprocess(layout(tl, seed=j)) for j, tl in enumerate(LAYOUTS)])


def test_planted_vit_reads_only_the_top_left():
    adapter = PlantedViT()
    pixels = planted_batch(adapter)
    noisy = pixels.clone()
    noisy[:, :, 32:, :] = torch.rand_like(noisy[:, :, 32:, :])  # everything outside the quarter
    noisy[:, :, :, 32:] = torch.rand_like(noisy[:, :, :, 32:])
    assert torch.allclose(adapter.encode_images(noisy), adapter.encode_images(pixels), atol=1e-6)
    assert not torch.allclose(adapter.encode_images(pixels.flip(-1)), adapter.encode_images(pixels), atol=1e-3)


def planted_maps(method, adapter, pixels, text=None):
    emb, prototype, target = _inputs(adapter, pixels)
    text = prototype if text is None else text
    return importance_maps(method, adapter, pixels, emb, text, target, list(range(len(pixels))), CCISettings(k=7))


def mass_inside(maps):
    """Per image, the share of positive attribution on the top-left patches (energy pointing, as faithfulness)."""
    tl = TopLeftReader.top_left()
    return maps[:, tl].clamp_min(0).sum(1) / maps.clamp_min(0).sum(1).clamp_min(1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["rollout", "chefer"])
def test_attention_methods_put_all_mass_on_the_read_region(method, seed):
    """Only the read region's tokens are reachable from the CLS row through the attention: rollout's product and
    Chefer's relevance are exactly 0 elsewhere and positive inside."""
    adapter = PlantedViT(seed)
    maps = planted_maps(method, adapter, planted_batch(adapter))
    tl = TopLeftReader.top_left()
    assert (maps[:, ~tl] == 0).all() and (maps[:, tl] > 0).all()


@pytest.mark.xfail(
    strict=True, reason="by construction: the planted ViT hides patches with a key mask outside q.k (see the docstring)"
)
@pytest.mark.parametrize("method", ["gradcam", "grad-eclip"])
def test_channel_weighted_methods_on_the_planted_vit(method):
    """Known failure on this planted construct, not evidence about ViT-CLIP (measured share inside the read
    quarter: Grad-CAM 0.02-0.14, Grad-ECLIP 0.00-0.03 over seeds 0-2). The planted ViT hides the unread patches
    with an additive key mask that is not part of q.k. Grad-ECLIP's spatial weight is by definition the cosine of
    q_cls and k_i and its channel term g.v_i, so it cannot see an out-of-band mask; Grad-CAM's channel weights
    are averaged over the patches and applied to every patch's activation. A trained CLIP ViT can only ignore a
    patch through its q.k logits or its values, both of which Grad-ECLIP reads. Strict: if a change makes them
    pass, this test says so."""
    adapter = PlantedViT()
    maps = planted_maps(method, adapter, planted_batch(adapter))
    assert (mass_inside(maps) > 0.5).all()


@pytest.mark.parametrize("method", list(METHODS))
def test_one_trace_per_batch_and_images_independent(method):
    adapter = PlantedViT()
    pixels = planted_batch(adapter)
    maps = planted_maps(method, adapter, pixels)
    assert adapter.traces == 1  # one traced forward (and at most one backward) for the whole batch
    alone = planted_maps(method, adapter, pixels[2:3], _inputs(adapter, pixels)[1][2:3])
    assert torch.allclose(alone[0], maps[2], atol=1e-6)


# ---- hand computations ---------------------------------------------------------------------------------------
def test_rollout_of_identity_and_uniform_attention():
    B, H, T, blocks = 2, 3, 5, 4
    pool = cls_pool(torch.zeros(B, T, 1))
    identity = [torch.eye(T).expand(B, H, T, T)] * blocks
    assert torch.equal(rollout_map(identity, pool, 1), torch.zeros(B, T - 1))  # CLS keeps to itself
    uniform = [torch.full((B, H, T, T), 1.0 / T)] * blocks
    # (I/2 + U/2)^L = I/2^L + (1 - 1/2^L) U, since U @ U = U: each patch gets (1 - 1/2^L) / T
    expected = torch.full((B, T - 1), (1 - 0.5**blocks) / T)
    assert torch.allclose(rollout_map(uniform, pool, 1), expected)


def test_gradcam_of_a_linear_readout_by_hand():
    """emb = sum_n A_n @ M (patches only): d cos(emb, t) / d A_n = M @ g with g = (t - s e) / |emb| for every n,
    so the weights are M @ g and the map is ReLU(A_n . (M @ g))."""
    g = torch.Generator().manual_seed(3)
    B, T, C, D = 2, 5, 4, 3
    acts = torch.randn(B, T, C, generator=g, requires_grad=True)
    M = torch.randn(C, D, generator=g)
    t = F.normalize(torch.randn(B, D, generator=g), dim=-1)
    emb = acts[:, 1:].sum(dim=1) @ M
    e = F.normalize(emb.detach(), dim=-1)
    s = (F.normalize(emb, dim=-1) * t).sum(-1)
    readout = Readout(torch.zeros(B, C), acts, acts, acts)
    trace = Trace(emb, [], acts, readout, cls_pool(acts), 1)
    gvec = (t - s.detach()[:, None] * e) / emb.detach().norm(dim=-1, keepdim=True)
    weights = gvec @ M.T  # (B, C)
    expected = (acts.detach()[:, 1:] * weights[:, None, :]).sum(-1).clamp_min(0)
    assert torch.allclose(gradcam_map(trace, s), expected, atol=1e-6)


def test_grad_eclip_and_chefer_by_hand():
    """Scores linear in the traced tensors, so the gradients are known: s = <attended[:, 0], w> + <probs, W>.
    Grad-ECLIP: ReLU(l_i * <w, v_i>), l = min-max of cos(q, k_i) over the patches; Chefer (one block):
    R = I + mean_heads(clamp(W * A, 0)), the map is R's CLS row at the patches."""
    from covar_harness.attribution.chefer import chefer_map
    from covar_harness.attribution.grad_eclip import grad_eclip_map

    g = torch.Generator().manual_seed(5)
    B, H, T, C = 2, 2, 6, 4
    q, k, v = (torch.randn(B, T, C, generator=g) for _ in range(3))
    attended = torch.randn(B, T, C, generator=g, requires_grad=True)
    probs = torch.rand(B, H, T, T, generator=g).softmax(-1).requires_grad_(True)
    w, W = torch.randn(C, generator=g), torch.randn(B, H, T, T, generator=g)
    s = (attended[:, 0] * w).sum(-1) + (probs * W).sum(dim=(1, 2, 3))
    trace = Trace(s, [probs], attended, Readout(q[:, 0], k, v, attended, 0), cls_pool(q), 1)
    cos = F.cosine_similarity(k[:, 1:], q[:, :1], dim=-1)
    loose = (cos - cos.min(1, keepdim=True).values) / (
        cos.max(1, keepdim=True).values - cos.min(1, keepdim=True).values
    )
    assert torch.allclose(grad_eclip_map(trace, s), (loose * (v[:, 1:] @ w)).clamp_min(0), atol=1e-6)
    cam = (W * probs.detach()).clamp_min(0).mean(dim=1)
    assert torch.allclose(chefer_map(trace, s), cam[:, 0, 1:], atol=1e-6)


# ---- adapters without a trace --------------------------------------------------------------------------------
def test_adapter_without_trace_is_refused():
    adapter = TopLeftReader()
    pixels = planted_batch(adapter)[:2]
    for method in METHODS:
        with pytest.raises(Unsupported, match="attention_trace"):
            importance_maps(method, adapter, pixels, *_inputs(adapter, pixels), [1, 2], CCISettings(k=4))


def test_faithfulness_command_reports_unsupported_in_one_line(tmp_path, toy_catalog, masked_task):  # noqa: F811
    out = tmp_path / "faith"
    proc = run_cli_inprocess(
        "faithfulness", "--models", "toy-topleft", "--tasks", str(masked_task), "--output-dir", str(out),
        "--attributors", "gradcam,occlusion", "--steps", "4", "--bootstrap", "0", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a method that could not run is not a success
    folder = out / "toy-topleft" / "toy__masked"
    grad = json.loads((folder / "gradcam.json").read_text())
    assert grad["error"] == "Unsupported: gradcam: adapter lacks attention_trace" and grad["n_samples"] == 0
    assert json.loads((folder / "occlusion.json").read_text())["error"] is None


@pytest.mark.parametrize("method", ["grad-eclip", "rollout", "chefer-last"])
def test_run_with_a_trace_attribution(tmp_path, task_yaml, method):
    """``run --attribution METHOD`` on an open_clip ViT: every sample gets the method's record (a cluster's
    importance is the sum of its patches')."""
    from toy_vit import read, run_cli

    model = f"openclip:local-dir:{make_openclip_dir(tmp_path / 'vit')}"
    code, out = run_cli(tmp_path, model, task_yaml, "--attribution", method, "--cci-k", "3", "--segmenter", "none")
    assert code == 0
    result, rows = read(out, model, "toy/shapes")
    records = [r["cci"] for r in rows]
    assert len(records) == 12 and all(r["method"] == method and len(r["importance"]) == 3 for r in records)
    if method == "chefer-last":  # the start block is recorded with the result
        assert result["config"]["attribution"]["chefer"] == {"start_layer": -1}
    assert any(abs(v) > 0 for r in records for v in r["importance"])
