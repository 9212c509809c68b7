"""Exact patch removal (docs/design.md section 3, attribution capability) for transformers CLIP, SigLIP and
SigLIP2 towers.

Each check compares the adapter's ``encode_images_without`` with a forward written here from the towers'
modules, so a mistake in the adapter (a leaked token, a missing layer norm, an unmasked pooling head) shows.
"""

from __future__ import annotations

import pytest
import torch

from covar_harness.models.specs import load_model
from helpers import COLOURS, make_image
from hf_helpers import FAMILIES, GRID, adapters, one_thread, save_tiny, tiny  # noqa: F401 (fixtures)

N = GRID * GRID
STRATEGIES = ("auto", "mask", "shorten")  # the driver's chunk plans: each must give the same embeddings


def pixels_for(adapter, n: int = 3):
    colours = list(COLOURS.values())[:n]
    return torch.stack([adapter.preprocess(make_image(c, 40, seed=i)) for i, c in enumerate(colours)])


def shortened_forward(adapter, pixels, keep: torch.Tensor) -> torch.Tensor:
    """The tower run on only the kept patch tokens (keep: (B, N_keep) indices), written from the HF modules."""
    model, vm = adapter.model, adapter.model.vision_model
    with torch.no_grad():
        if adapter.architecture == "siglip2":
            inputs = adapter.image_inputs(pixels)
            tokens = vm.embeddings(inputs["pixel_values"], inputs["spatial_shapes"])
        else:
            tokens = vm.embeddings(pixels)
        prefix = 1 if adapter.architecture == "clip" else 0
        kept = torch.stack([tokens[b, prefix:][keep[b]] for b in range(len(keep))])
        x = torch.cat([tokens[:, :prefix], kept], dim=1)
        if adapter.architecture == "clip":
            h = vm.encoder(inputs_embeds=vm.pre_layrnorm(x)).last_hidden_state
            return model.visual_projection(vm.post_layernorm(h[:, 0]))
        return vm.head(vm.post_layernorm(vm.encoder(inputs_embeds=x).last_hidden_state))


def random_drop(shape, p: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) < p


@pytest.mark.parametrize("family", FAMILIES)
def test_dropping_nothing_equals_encode_images(family, adapters):
    adapter = adapters[family]
    pixels = pixels_for(adapter)
    want = adapter.encode_images(pixels)
    torch.testing.assert_close(
        adapter.encode_images_without(pixels, torch.zeros(3, N, dtype=torch.bool)), want, atol=1e-5, rtol=0
    )
    both = adapter.encode_images_without(pixels, torch.zeros(3, 2, N, dtype=torch.bool))
    assert both.shape == (3, 2, want.shape[1])
    torch.testing.assert_close(both[:, 1], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_removal_equals_explicit_shortened_forward(family, adapters):
    adapter = adapters[family]
    pixels = pixels_for(adapter)
    g = torch.Generator().manual_seed(1)
    keep = torch.stack([torch.randperm(N, generator=g)[:40].sort().values for _ in range(3)])  # 24 dropped each
    drop = torch.ones(3, N, dtype=torch.bool).scatter(1, keep, False)
    want = shortened_forward(adapter, pixels, keep)
    torch.testing.assert_close(adapter.encode_images_without(pixels, drop), want, atol=1e-5, rtol=1e-5)
    unequal = drop.clone()
    unequal[0, keep[0, :5]] = True  # row 0 now drops more: the rows cannot share one shortened sequence
    want0 = shortened_forward(adapter, pixels[:1], keep[:1, 5:])
    for strategy in STRATEGIES:
        got = adapter.encode_images_without(pixels, unequal, strategy=strategy)
        torch.testing.assert_close(got[0], want0[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1:], want[1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_paths_equal_the_shortened_path(family, adapters):
    adapter = adapters[family]
    pixels = pixels_for(adapter)
    drop = random_drop((3, 4, N), 0.35, seed=2)  # counts differ between patterns
    assert len(set((~drop).sum(-1).flatten().tolist())) > 4
    shortened = adapter.encode_images_without(pixels, drop, strategy="shorten")  # one chunk per kept count
    for b, k in [(0, 0), (1, 3), (2, 1)]:  # spot-check the shortened path itself one pattern at a time
        alone = adapter.encode_images_without(pixels[b : b + 1], drop[b, k][None])
        torch.testing.assert_close(shortened[b, k], alone[0], atol=1e-5, rtol=1e-5)
    for strategy in ("mask", "auto"):  # full-length key mask; padded chunks with a key mask
        torch.testing.assert_close(
            adapter.encode_images_without(pixels, drop, strategy=strategy), shortened, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_dropped_patches_do_not_reach_the_embedding(family, adapters):
    """Scrambling the pixels of dropped patches changes nothing: no leak through attention or the pooling head."""
    adapter = adapters[family]
    pixels = pixels_for(adapter)
    drop = random_drop((3, 2, N), 0.4, seed=3)
    drop[:, 1] = False
    drop[:, 1, :10] = True  # a second pattern with a different count: the masked path
    patch = adapter.model.config.vision_config.patch_size
    region = drop[:, 0].view(3, GRID, GRID).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    region &= drop[:, 1].view(3, GRID, GRID).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    scrambled = torch.where(region[:, None], torch.randn_like(pixels) * 3, pixels)
    assert not torch.equal(scrambled, pixels)
    for strategy in STRATEGIES:
        torch.testing.assert_close(
            adapter.encode_images_without(scrambled, drop, strategy=strategy),
            adapter.encode_images_without(pixels, drop, strategy=strategy),
            atol=1e-5,
            rtol=1e-5,
        )
    assert not torch.allclose(adapter.encode_images(scrambled), adapter.encode_images(pixels), atol=1e-4)


def test_siglip2_masked_path_equals_the_models_own_pixel_attention_mask(adapters):
    adapter = adapters["siglip2"]
    pixels = pixels_for(adapter)
    drop = random_drop((3, N), 0.3, seed=4)
    inputs = adapter.image_inputs(pixels)
    inputs["pixel_attention_mask"] = (~drop).long()
    with torch.no_grad():
        want = adapter.model.vision_model(**inputs).pooler_output
    torch.testing.assert_close(adapter.encode_images_without(pixels, drop), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_tokens_are_the_encoder_hidden_states(family, adapters):
    adapter = adapters[family]
    pixels = pixels_for(adapter)
    inputs = adapter.image_inputs(pixels)
    with torch.no_grad():
        hidden = adapter.model.vision_model(**inputs, output_hidden_states=True).hidden_states
    prefix = 1 if family == "clip" else 0
    assert adapter.patch_grid == (GRID, GRID)
    tokens = adapter.patch_tokens(pixels)
    assert tokens.shape == (3, N, 32)
    torch.testing.assert_close(tokens, hidden[-1][:, prefix:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.patch_tokens(pixels, layer=0), hidden[1][:, prefix:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_removal_runs_and_tracks_fp32(family, tiny, adapters):
    fp32 = adapters[family]
    bf16 = load_model(f"hf:{tiny[family]}", precision="bf16")
    pixels = pixels_for(fp32)
    drop = random_drop((3, 3, N), 0.3, seed=5)
    got = bf16.encode_images_without(pixels, drop, strategy="mask")
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    cos = torch.nn.functional.cosine_similarity(got, fp32.encode_images_without(pixels, drop), dim=-1)
    assert cos.min() > 0.97
    torch.testing.assert_close(
        bf16.encode_images_without(pixels, torch.zeros(3, N, dtype=torch.bool)),
        bf16.encode_images(pixels),
        atol=2e-2,
        rtol=2e-2,
    )
