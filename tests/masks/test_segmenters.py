"""Segmenters (issue 8, item 1): the mask -> patch-grid helpers, the ``auto`` rule, ``dataset`` and ``groundedsam``.

GroundedSAM runs on tiny random Grounding DINO / SAM checkpoints saved locally (tests/segmenter_helpers.py)
and loaded through the same ``from_pretrained`` path as hub ids; real weights cannot be fetched offline.
Random weights score boxes arbitrarily, so the tests set the thresholds to 0 (a box is always kept) or 1
(none can be) and assert the wiring: sizes, modes, batching, the class-token gate and the cache.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.masks.geometry import geometric_like, mask_patch_fractions, mask_to_patch_grid
from covar_harness.masks.segmenter import (
    MaskCache,
    choose_segmenter,
    grounding_prompt,
    image_fingerprint,
    label_prompts,
)


def stripe_mask(width: int, height: int, x0: int, x1: int) -> Image.Image:
    """Mode L, white (object) on columns x0..x1-1, black elsewhere."""
    arr = np.zeros((height, width), dtype=np.uint8)
    arr[:, x0:x1] = 255
    return Image.fromarray(arr, mode="L")


# ---- mask_to_patch_grid ------------------------------------------------------------------------------------
def test_patch_grid_holds_exact_foreground_fractions():
    mask = stripe_mask(8, 8, 0, 3)  # 3 of 8 columns white
    np.testing.assert_array_equal(mask_to_patch_grid(mask, None, (1, 2)), [[0.75, 0.0]])
    np.testing.assert_array_equal(mask_to_patch_grid(mask, None, (2, 4)), [[1.0, 0.5, 0.0, 0.0]] * 2)
    assert mask_to_patch_grid(mask, (8, 8), (2, 4)).dtype == np.float32


def test_patch_grid_resamples_to_the_input_frame_and_reads_fraction_masks():
    big = stripe_mask(16, 16, 0, 6)  # same picture at twice the size: columns 0..2.99 of an 8 px frame
    np.testing.assert_allclose(mask_to_patch_grid(big, (8, 8), (1, 2)), [[0.75, 0.0]], atol=1e-6)
    soft = Image.fromarray(np.full((4, 4), 0.25, dtype=np.float32), mode="F")  # mode F = fractions already
    np.testing.assert_allclose(mask_to_patch_grid(soft, None, (2, 2)), np.full((2, 2), 0.25))


def test_patch_grid_that_does_not_tile_the_frame_still_measures_area():
    full, empty = Image.new("L", (10, 10), 255), Image.new("L", (10, 10), 0)
    np.testing.assert_allclose(mask_to_patch_grid(full, None, (3, 3)), np.ones((3, 3)), atol=1e-6)
    np.testing.assert_allclose(mask_to_patch_grid(empty, None, (3, 3)), np.zeros((3, 3)))
    left = mask_to_patch_grid(stripe_mask(10, 10, 0, 5), None, (3, 3))
    assert (left[:, 0] > 0.99).all() and (left[:, 2] < 0.01).all()
    assert ((0.2 < left[:, 1]) & (left[:, 1] < 0.8)).all()  # the middle column is split by the object edge


# ---- geometric_like ----------------------------------------------------------------------------------------
def test_centre_crop_pipeline_shifts_the_mask_as_the_image():
    from torchvision import transforms as T

    preprocess = T.Compose(
        [
            T.Resize(16, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(16),
            T.ToTensor(),
            T.Normalize((0.5,) * 3, (0.2,) * 3),
        ]
    )
    # 64x32 image; object on columns 20..31. Resize -> 32x16, object 10..15; centre crop keeps columns 8..23,
    # so the object lands on crop columns 2..7: half of the first 4 px patch, all of the second.
    mask = stripe_mask(64, 32, 20, 32)
    moved = geometric_like(preprocess, mask)
    assert moved.mode == "F" and moved.size == (16, 16)
    np.testing.assert_array_equal(mask_to_patch_grid(moved, None, (1, 4)), [[0.5, 1.0, 0.0, 0.0]])
    squashed = mask_to_patch_grid(mask.resize((16, 16), Image.BOX), None, (1, 4))  # what ignoring the crop gives
    assert not np.allclose(squashed, [[0.5, 1.0, 0.0, 0.0]])


def test_open_clip_eval_transform_is_replayed_without_colour_steps():
    import open_clip

    preprocess = open_clip.image_transform(32, is_train=False)  # Resize(32) CenterCrop(32) convert ToTensor Norm
    # 128x64: resize halves it to 64x32, the crop keeps resized columns 16..47; object 40..63 -> 20..31 -> 4..15
    fractions = mask_patch_fractions(preprocess, stripe_mask(128, 64, 40, 64), (4, 4))
    np.testing.assert_array_equal(fractions, [[0.5, 1.0, 0.0, 0.0]] * 4)


def test_other_preprocessors_are_followed_through_the_whole_pipeline():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})

    def preprocess(image):  # what the hf: adapter does: the checkpoint's processor, (3, H, W) out
        return processor(images=image, return_tensors="np")["pixel_values"][0]

    # 64x32, object on columns 16..31 -> resized 8..15 -> cropped 0..7: the left patch, not the right one
    fractions = mask_patch_fractions(preprocess, stripe_mask(64, 32, 16, 32), (1, 2))
    np.testing.assert_allclose(fractions, [[1.0, 0.0]], atol=0.06)


def test_unusable_preprocess_falls_back_to_plain_resize():
    def broken(image):
        raise RuntimeError("not an image pipeline")

    def constant(image):  # not per-channel affine: black and white probes agree
        return np.zeros((3, 8, 8), dtype=np.float32)

    mask = stripe_mask(32, 16, 0, 8)
    for preprocess in (broken, constant):
        moved = geometric_like(preprocess, mask, input_size_hw=(8, 8))
        assert moved.size == (8, 8)
        np.testing.assert_array_equal(mask_to_patch_grid(moved, None, (1, 4)), [[1.0, 0.0, 0.0, 0.0]])
    assert geometric_like(broken, mask).size == mask.size  # no input size known: unchanged


def test_random_geometric_steps_are_refused():
    from torchvision import transforms as T

    with pytest.raises(ValueError, match="RandomResizedCrop"):
        geometric_like(T.Compose([T.RandomResizedCrop(8)]), stripe_mask(16, 16, 0, 8))


# ---- prompts, cache -------------------------------------------------------------------------------------
def test_grounding_prompt_is_lowercase_and_dot_terminated():
    assert grounding_prompt("Great_White  Shark") == "great white shark."
    assert grounding_prompt("cat.") == "cat."


def test_mask_cache_round_trip_is_atomic_and_remembers_misses(tmp_path):
    cache = MaskCache(tmp_path)
    key_a, key_b = MaskCache.key(image="a", prompt="cat."), MaskCache.key(image="a", prompt="dog.")
    assert key_a != key_b and cache.get(key_a) is MaskCache.MISSING
    cache.put(key_a, stripe_mask(6, 4, 0, 3))
    cache.put(key_b, None)
    assert np.array_equal(np.asarray(cache.get(key_a)), np.asarray(stripe_mask(6, 4, 0, 3)))
    assert cache.get(key_b) is None
    assert not list(tmp_path.rglob("*.tmp"))  # temp files (safe_files.atomic_write) renamed away
    (tmp_path / key_a[:2] / f"{key_a}.png").write_bytes(b"truncated")
    assert cache.get(key_a) is MaskCache.MISSING  # a damaged entry is recomputed, not an error


def test_image_fingerprint_is_about_pixels_not_files(tmp_path):
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    image.save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as reopened:
        assert image_fingerprint(reopened) == image_fingerprint(image)
    assert image_fingerprint(image.transpose(Image.FLIP_LEFT_RIGHT)) != image_fingerprint(image)


# ---- sample sets, catalog, choose_segmenter ---------------------------------------------------------------------
def make_samples(root: Path, sizes=((40, 30), (24, 36), (32, 32)), masks: bool = False) -> SampleSet:
    """Noisy RGB images of the given (W, H) sizes; labels 0, 1, 0, ...; optional half-width masks."""
    rng = np.random.default_rng(0)
    samples = []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
        meta = {}
        if masks and i != 2:  # sample 2 has no mask; sample 1's is stored at twice the resolution
            scale = 2 if i == 1 else 1
            stripe_mask(w * scale, h * scale, 0, w * scale // 2).save(root / f"{i}_mask.png")
            meta["mask"] = f"{i}_mask.png"
        samples.append(Sample(f"{i}.png", i % 2, meta))
    return SampleSet(samples, ["cat", "dog"], root)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_both_segmenters_are_registered_without_importing_torch():
    code = (
        "import sys; from covar_harness.catalog.plugin_manager import load_catalog; c = load_catalog(); "
        "print(sorted(c.segmenters.names()), 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("]")[0].count("'dataset'") == 1 and "'groundedsam'" in out.stdout
    assert out.stdout.strip().endswith("False False")


def test_dataset_segmenter_returns_the_task_masks_at_image_size(tmp_path, catalog):
    samples = make_samples(tmp_path, masks=True)
    segmenter = choose_segmenter("dataset", samples, catalog)
    masks = segmenter.masks(samples, [0, 1, 2], label_prompts(samples, [0, 1, 2]))
    assert masks[2] is None
    for i in (0, 1):
        assert masks[i].mode == "L" and masks[i].size == samples.open_image(i).size
        np.testing.assert_array_equal(mask_to_patch_grid(masks[i], None, (1, 2)), [[1.0, 0.0]])


def test_auto_uses_dataset_masks_when_present_else_groundedsam(tmp_path, catalog):
    (tmp_path / "with").mkdir(), (tmp_path / "without").mkdir()
    with_masks, without = make_samples(tmp_path / "with", masks=True), make_samples(tmp_path / "without")
    settings = {"box_threshold": 0.1, "cache_dir": str(tmp_path / "cache")}
    assert choose_segmenter("auto", with_masks, catalog, settings).name == "dataset"  # fallback settings unused
    fallback = choose_segmenter("auto", without, catalog, settings)
    assert fallback.name == "groundedsam" and fallback.box_threshold == 0.1
    assert fallback.cache.root == tmp_path / "cache"
    with pytest.raises(UsageError, match="ships no foreground masks"):
        choose_segmenter("dataset", without, catalog)
    with pytest.raises(UsageError, match="no setting 'box_treshold'.*box_threshold"):
        choose_segmenter("groundedsam", without, catalog, {"box_treshold": 0.2})
    with pytest.raises(UsageError, match="no setting 'detector'"):
        choose_segmenter("dataset", with_masks, catalog, {"detector": "x"})
    with pytest.raises(UsageError, match="unknown segmenter"):
        choose_segmenter("sam3", without, catalog)


# ---- groundedsam on tiny random checkpoints -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    from segmenter_helpers import make_grounding_dino_dir, make_sam_dir

    root = tmp_path_factory.mktemp("grounded-sam")
    return {
        "detector": str(make_grounding_dino_dir(root / "gdino")),
        "sam": str(make_sam_dir(root / "sam")),
        "empty_sam": str(make_sam_dir(root / "sam-empty", mask_sign=-1)),
    }


def grounded_settings(checkpoints: dict[str, str], **extra) -> dict:
    return dict(detector=checkpoints["detector"], sam=checkpoints["sam"], device="cpu", **extra)


def count_forward_calls(segmenter) -> dict[str, int]:
    """Hook both loaded models; the returned dict counts their forward calls from now on."""
    calls = {"detector": 0, "sam": 0}
    for name in calls:
        segmenter._models[name].register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    return calls


def forbid_loading(segmenter, monkeypatch):
    def fail():
        raise AssertionError("models loaded although every mask was cached")

    monkeypatch.setattr(segmenter, "_load", fail)


def test_groundedsam_masks_are_batched_sized_and_cached(tmp_path, catalog, tiny_checkpoints, monkeypatch):
    samples = make_samples(tmp_path)
    settings = grounded_settings(
        tiny_checkpoints, box_threshold=0.0, text_threshold=0.0, batch_size=2, cache_dir=str(tmp_path / "cache")
    )
    segmenter = choose_segmenter("groundedsam", samples, catalog, settings)
    indices = [0, 1, 2]
    first = segmenter.masks(samples, indices[:1], ["Cat"])  # loads the models
    calls = count_forward_calls(segmenter)
    sam_boxes = []
    segmenter._models["sam"].register_forward_pre_hook(
        lambda module, args, kwargs: sam_boxes.append(kwargs["input_boxes"].clone()), with_kwargs=True
    )
    masks = segmenter.masks(samples, indices, ["Cat", "dog", "CAT"])
    assert calls == {"detector": 1, "sam": 1}  # image 0 cached; images 1 and 2 in one batch of each model
    images = [samples.open_image(i) for i in (1, 2)]
    detected = segmenter._detect(images, ["dog.", "cat."])  # each image's own best box reached SAM, in order
    for image, box, sent in zip(images, detected, sam_boxes[0]):
        np.testing.assert_allclose(sent[0].numpy(), np.array(box) * 64 / max(image.size), atol=1.0)
    for i, mask in zip(indices, masks):
        assert mask is not None and mask.mode == "L" and mask.size == samples.open_image(i).size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert np.array_equal(np.asarray(first[0]), np.asarray(masks[0]))
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 3

    before = dict(calls)
    again = segmenter.masks(samples, indices, ["cat", "dog", "cat."])  # same normalised prompts: all cached
    assert calls == before
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(masks, again))

    fresh = choose_segmenter("groundedsam", samples, catalog, settings)  # a new process, the same cache
    forbid_loading(fresh, monkeypatch)
    cached = fresh.masks(samples, indices, ["cat", "dog", "cat"])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(masks, cached))

    stricter = choose_segmenter("groundedsam", samples, catalog, {**settings, "text_threshold": 0.01})
    forbid_loading(stricter, monkeypatch)
    with pytest.raises(AssertionError, match="models loaded"):  # other thresholds: other cache entries
        stricter.masks(samples, [0], ["cat"])


def test_groundedsam_without_a_box_returns_none_and_caches_it(tmp_path, catalog, tiny_checkpoints, monkeypatch):
    samples = make_samples(tmp_path)
    settings = grounded_settings(
        tiny_checkpoints, box_threshold=1.0, text_threshold=0.0, cache_dir=str(tmp_path / "cache")
    )
    segmenter = choose_segmenter("groundedsam", samples, catalog, settings)
    assert segmenter.masks(samples, [0, 1], ["cat", "dog"]) == [None, None]  # no probability exceeds 1
    assert len(list((tmp_path / "cache").rglob("*.none"))) == 2
    fresh = choose_segmenter("groundedsam", samples, catalog, settings)
    forbid_loading(fresh, monkeypatch)
    assert fresh.masks(samples, [0, 1], ["cat", "dog"]) == [None, None]


def test_groundedsam_box_must_match_a_word_of_the_class_name(tmp_path, catalog, tiny_checkpoints):
    samples = make_samples(tmp_path, sizes=((32, 32),))
    settings = grounded_settings(tiny_checkpoints, box_threshold=0.0, text_threshold=0.0, cache=False)
    segmenter = choose_segmenter("groundedsam", samples, catalog, settings)
    # "zebra" is not in the tiny vocabulary: only [CLS] [UNK] . [SEP], none of them a class-name token
    assert segmenter.masks(samples, [0], ["zebra"]) == [None]
    assert segmenter.masks(samples, [0], ["red square"])[0] is not None
    assert not (tmp_path / "cache").exists()


def test_groundedsam_empty_sam_mask_counts_as_not_found(tmp_path, catalog, tiny_checkpoints):
    samples = make_samples(tmp_path, sizes=((32, 32),))
    settings = grounded_settings(tiny_checkpoints, box_threshold=0.0, text_threshold=0.0, cache=False)
    settings["sam"] = tiny_checkpoints["empty_sam"]
    assert choose_segmenter("groundedsam", samples, catalog, settings).masks(samples, [0], ["cat"]) == [None]
