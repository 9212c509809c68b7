"""Exactness of patch-token removal (the attribution capability) for every open_clip vision-tower family.

Tiny random models, saved as local-dir folders and loaded through covar_harness.load_model. Each architecture is
checked against an explicit shortened-sequence forward written here from the tower's modules (embed, delete
tokens after the position embedding, run the blocks, pool, project), not through the adapter or the driver.
"""

from __future__ import annotations

import pytest
import torch
from timm.models import register_model
from timm.models import vision_transformer as timm_vit

import covar_harness
from covar_harness.models.adapter import attribution_support
from helpers import TINY_OPENCLIP_CFG, make_openclip_dir


def tiny_timm(**overrides):
    """A tiny timm VisionTransformer: base kwargs of SigLIP's entrypoint, shrunk; overrides pick the variant."""
    return dict(img_size=(32, 48), patch_size=8, embed_dim=32, depth=2, num_heads=2, **overrides)


# Registered under names without "siglip" so open_clip's tokenizer lookup stays offline.
@register_model
def covar_test_vit_map(pretrained=False, **kwargs):  # SigLIP layout: no CLS, MAP attention-pool head
    return timm_vit.vit_base_patch16_siglip_224(pretrained=pretrained, **{**tiny_timm(), **kwargs})


@register_model
def covar_test_vit_cls(pretrained=False, **kwargs):  # CLIP-style timm ViT: CLS token readout, pre-norm
    return timm_vit.vit_large_patch14_clip_224(pretrained=pretrained, **{**tiny_timm(), **kwargs})


@register_model
def covar_test_vit_reg_avg(pretrained=False, **kwargs):  # registers (prefix tokens) and average pooling
    return timm_vit._create_vision_transformer(
        "vit_medium_patch16_gap_256",
        pretrained=pretrained,
        **{**tiny_timm(class_token=False, reg_tokens=2, no_embed_class=True, global_pool="avg"), **kwargs},
    )


def vision(**cfg):
    return {**TINY_OPENCLIP_CFG, "vision_cfg": cfg}


NATIVE = {"image_size": [32, 48], "patch_size": 8, "width": 64, "layers": 2, "head_width": 32}
ARCHS = {
    "native-cls": vision(**NATIVE),
    "native-avg-final-ln": vision(**NATIVE, pool_type="avg", final_ln_after_pool=True, no_ln_pre=True),
    "native-custom-block": vision(**NATIVE, qk_norm=True, ls_init_value=0.5),
    "native-attnpool": vision(**NATIVE, attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2),
    "timm-map": vision(image_size=[32, 48], timm_model_name="covar_test_vit_map", timm_pool="map", timm_proj="none"),
    "timm-cls-linear": vision(
        image_size=[32, 48], timm_model_name="covar_test_vit_cls", timm_pool="", timm_proj="linear"
    ),
    "timm-reg-avg": vision(
        image_size=[32, 48], timm_model_name="covar_test_vit_reg_avg", timm_pool="avg", timm_proj="linear"
    ),
}
GRID = (4, 6)  # 32 x 48 pixels, patch 8: a non-square grid catches rows/cols mix-ups
N = GRID[0] * GRID[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and avoids OpenMP spin-waits on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("removal-models")
    return {name: make_openclip_dir(root / name, cfg, seed=i) for i, (name, cfg) in enumerate(ARCHS.items())}


@pytest.fixture(scope="module")
def adapters(model_dirs):
    cache = {}

    def get(name: str, precision: str = "fp32"):
        if (name, precision) not in cache:
            cache[name, precision] = covar_harness.load_model(
                f"openclip:local-dir:{model_dirs[name]}", precision=precision
            )
        return cache[name, precision]

    return get


def pixels(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 32, 48, generator=torch.Generator().manual_seed(seed))


def drops(b: int, k: int, seed: int, p: float = 0.35) -> torch.Tensor:
    """(b, k, N) patterns with different numbers of dropped patches (as CCI's clusters have)."""
    d = torch.rand(b, k, N, generator=torch.Generator().manual_seed(seed)) < p
    d[..., 5] = False
    return d


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    """Absolute tolerance relative to the embedding's scale (timm's random init gives tiny embeddings)."""
    scale = max(float(b.abs().max()), 1e-12)
    torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=tol)


# ------------------------------------------------------------------ independent shortened-sequence forwards
def explicit_native(visual, px: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """open_clip VisionTransformer by hand: patchify, CLS, position embedding, ln_pre, delete, blocks, pool."""
    x = visual.conv1(px).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    x = x[:, torch.cat([torch.tensor([True]), keep])]
    for blk in visual.transformer.resblocks:
        x = blk(x)
    if visual.attn_pool is not None:
        pooled = visual.ln_post(visual.attn_pool(x))[:, 0]
    elif visual.pool_type == "avg" and visual.final_ln_after_pool:
        pooled = visual.ln_post(x[:, 1:].mean(dim=1))
    elif visual.pool_type == "avg":
        pooled = visual.ln_post(x)[:, 1:].mean(dim=1)
    else:
        pooled = visual.ln_post(x)[:, 0]
    return pooled @ visual.proj


def explicit_timm(visual, px: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """timm VisionTransformer by hand: patchify, prefix tokens, position embedding, delete, blocks, pool, head."""
    t = visual.trunk
    x = t.patch_embed(px)
    prefix = [tok.expand(x.shape[0], -1, -1) for tok in (t.cls_token, t.reg_token) if tok is not None]
    x = torch.cat(prefix + [x + t.pos_embed], 1) if t.no_embed_class else torch.cat(prefix + [x], 1) + t.pos_embed
    p = t.num_prefix_tokens
    x = t.norm_pre(x)[:, torch.cat([torch.ones(p, dtype=torch.bool), keep])]
    for blk in t.blocks:
        x = blk(x)
    x = t.norm(x)
    if t.attn_pool is not None:
        pooled = t.attn_pool(x[:, p:])
    elif t.global_pool == "token":
        pooled = x[:, 0]
    else:
        pooled = x[:, p:].mean(dim=1)
    return visual.head(t.head(t.fc_norm(pooled)))


def explicit(adapter, px: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    visual = adapter.model.visual
    with torch.inference_mode():
        fn = explicit_timm if hasattr(visual, "trunk") else explicit_native
        return fn(visual, px.to(adapter.dtype), keep).float()


def explicit_tokens(adapter, px: torch.Tensor, upto: int) -> torch.Tensor:
    """Patch tokens after block ``upto`` (absolute index), from the explicit forward with nothing deleted."""
    visual = adapter.model.visual
    with torch.inference_mode():
        if hasattr(visual, "trunk"):
            t = visual.trunk
            x, p, blocks = t.norm_pre(t._pos_embed(t.patch_embed(px))), t.num_prefix_tokens, t.blocks
        else:
            x, p, blocks = visual._embeds(px), 1, visual.transformer.resblocks
        for blk in blocks[: upto + 1]:
            x = blk(x)
        return x[:, p:]


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("arch", ARCHS)
def test_capability_and_grid(adapters, arch):
    a = adapters(arch)
    assert attribution_support(a) == (True, "")
    assert a.patch_grid == GRID


@pytest.mark.parametrize("arch", ARCHS)
def test_nothing_dropped_equals_encode_images(adapters, arch):
    a, px = adapters(arch), pixels()
    none = torch.zeros(3, N, dtype=torch.bool)
    for strategy in ("auto", "mask"):
        close(a.encode_images_without(px, none, strategy=strategy), a.encode_images(px))


@pytest.mark.parametrize("arch", ARCHS)
def test_removal_equals_explicit_shortened_forward(adapters, arch):
    a, px = adapters(arch), pixels()
    drop = drops(3, 4, seed=1)
    got = {s: a.encode_images_without(px, drop, strategy=s) for s in ("auto", "shorten", "mask")}
    for b in range(3):
        for k in range(4):
            want = explicit(a, px[b : b + 1], ~drop[b, k])[0]
            for out in got.values():
                close(out[b, k], want)
    # removal changes the embedding (so the comparison above is not trivially true)
    assert (got["auto"] - a.encode_images(px)[:, None]).abs().amax() > 1e-3 * a.encode_images(px).abs().max()


@pytest.mark.parametrize("arch", ARCHS)
def test_removed_patch_pixels_do_not_reach_the_output(adapters, arch):
    a, px = adapters(arch), pixels(2)
    r, c = 2, 3  # patch (row 2, col 3) in raster order
    n = r * GRID[1] + c
    drop = torch.zeros(2, N, dtype=torch.bool)
    drop[:, [n, 0, 7]] = True
    poked = px.clone()
    poked[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] += 5.0
    for strategy in ("shorten", "mask"):
        assert torch.equal(
            a.encode_images_without(px, drop, strategy=strategy),
            a.encode_images_without(poked, drop, strategy=strategy),
        ), strategy
    kept = drop.clone()
    kept[:, n] = False  # the same poke on a kept patch does change the embedding
    assert not torch.allclose(a.encode_images_without(px, kept), a.encode_images_without(poked, kept))


@pytest.mark.parametrize("arch", ["native-cls", "native-attnpool", "timm-map", "timm-reg-avg"])
def test_batched_patterns_equal_per_pattern_calls(adapters, arch):
    a, px = adapters(arch), pixels(3, seed=2)
    drop = drops(3, 7, seed=3, p=0.2)
    batched = a.encode_images_without(px, drop)
    assert batched.shape == (3, 7, a.encode_images(px).shape[1])
    for b in range(3):
        for k in range(7):
            close(batched[b, k], a.encode_images_without(px[b : b + 1], drop[b, k][None])[0])
    close(a.encode_images_without(px, drop, max_rows=2), batched)  # chunking does not change results


@pytest.mark.parametrize("arch", ["native-cls", "native-custom-block", "timm-map", "timm-cls-linear"])
def test_patch_tokens_are_raster_ordered_block_outputs(adapters, arch):
    a, px = adapters(arch), pixels(2)
    tokens = a.patch_tokens(px)
    assert tokens.shape[:2] == (2, N) and tokens.dtype == torch.float32
    close(tokens, explicit_tokens(a, px, upto=1))
    close(a.patch_tokens(px, layer=0), explicit_tokens(a, px, upto=0))
    close(a.patch_tokens(px, layer=-2), explicit_tokens(a, px, upto=0))
    with pytest.raises(IndexError):
        a.patch_tokens(px, layer=2)


# not native-attnpool: open_clip keeps AttentionalPooler.query in fp32, so its own encode_image fails in bf16
@pytest.mark.parametrize("arch", ["native-cls", "native-avg-final-ln", "timm-map"])
def test_bf16_runs_and_tracks_fp32(adapters, arch):
    a16, a32, px = adapters(arch, "bf16"), adapters(arch), pixels(2)
    drop = drops(2, 3, seed=4)
    out = {s: a16.encode_images_without(px, drop, strategy=s) for s in ("auto", "mask")}
    ref = a32.encode_images_without(px, drop)
    for o in out.values():
        assert o.dtype == torch.float32 and torch.isfinite(o).all()
        cos = torch.nn.functional.cosine_similarity(o, ref, dim=-1)
        assert cos.min() > 0.98, cos
    none = torch.zeros(2, N, dtype=torch.bool)
    close(a16.encode_images_without(px, none), a16.encode_images(px), tol=2e-2)


def test_drop_validation(adapters):
    a, px = adapters("native-cls"), pixels(1)
    with pytest.raises(ValueError, match="N=24"):
        a.encode_images_without(px, torch.zeros(1, N + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="every patch"):
        a.encode_images_without(px, torch.ones(1, N, dtype=torch.bool))


UNSUPPORTED = {  # config, words the reason must contain
    "resnet": (vision(image_size=32, layers=[1, 1, 1, 1], width=16, head_width=8), "not a ViT"),
    "timm-convnext": (
        vision(image_size=32, timm_model_name="convnext_atto", timm_pool="avg", timm_proj="linear"),
        "not a plain timm VisionTransformer",
    ),
    "native-attnpool-parallel": (
        vision(
            image_size=32,
            patch_size=8,
            width=32,
            layers=1,
            head_width=16,
            attentional_pool="parallel",
            attn_pooler_queries=4,
            attn_pooler_heads=2,
        ),
        "(B, 1, D)",
    ),
}


@pytest.mark.parametrize("arch", UNSUPPORTED)
def test_unsupported_towers_report_why_per_instance(tmp_path, adapters, arch):
    cfg, words = UNSUPPORTED[arch]
    a = covar_harness.load_model(f"openclip:local-dir:{make_openclip_dir(tmp_path / arch, cfg)}")
    supported, reason = attribution_support(a)
    assert not supported and words in reason, reason
    assert a.encode_images(torch.randn(1, 3, 32, 32)).shape[0] == 1  # still a usable model
    with pytest.raises(NotImplementedError, match="no attribution support"):
        a.encode_images_without(torch.randn(1, 3, 32, 32), torch.zeros(1, 1, dtype=torch.bool))
    assert attribution_support(adapters("native-cls")) == (True, "")  # the flag lives on instances
