"""The ``hf:`` adapter on tiny random CLIP / SigLIP / SigLIP2 models: parity with each family's own reference path,
the known preprocessing traps, precision, caches and download errors, and an end-to-end ``covar-harness run``."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from covar_harness.models.specs import ModelLoadError, load_model
from covar_harness.results import validation
from covar_harness.run.text_cache import build_classifier
from covar_harness_plugins.transformers import features
from helpers import COLOURS, cli, make_image, write_task_yaml
from hf_helpers import FAMILIES, adapters, as_hub_cache, one_thread, save_tiny, tiny  # noqa: F401 (fixtures)

CLASSES = ["cat", "dog", "fish", "bird", "red thing", "green thing", "blue thing"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def images():
    return [make_image(c, 40, seed=i) for i, c in enumerate([*COLOURS.values(), (90, 30, 160), (10, 10, 10)])]


def reference(path, family: str, images):
    """The family's own path: ``model(**processor(text, images))``; returns logits_per_image and the model."""
    import transformers as tf

    model = tf.AutoModel.from_pretrained(path).eval()
    processor = tf.AutoProcessor.from_pretrained(path)
    padding = True if family == "clip" else "max_length"  # HF's documented usage for each family
    inputs = processor(
        text=[TEMPLATE.format(c) for c in CLASSES],
        images=images,
        padding=padding,
        return_tensors="pt",
        **naflex_kwargs(processor, family),
    )
    if family != "clip":  # SigLIP was trained without a text attention mask (big_vision; open_clip uses none)
        inputs.pop("attention_mask", None)
    with torch.no_grad():
        return model(**inputs).logits_per_image, model


def naflex_kwargs(processor, family: str) -> dict:
    """Siglip2Processor's own defaults (patch 16, 256 patches) override the saved image processor's: pass them."""
    if family != "siglip2":
        return {}
    return {
        "patch_size": processor.image_processor.patch_size,
        "max_num_patches": processor.image_processor.max_num_patches,
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_shot_predictions_match_reference_path(family, tiny, adapters, images):
    adapter = adapters[family]
    W = build_classifier(adapter, CLASSES, [TEMPLATE])
    pixels = torch.stack([adapter.preprocess(im) for im in images])
    cos = F.normalize(adapter.encode_images(pixels), dim=-1) @ W
    logits, model = reference(tiny[family], family, images)
    bias = model.logit_bias if family != "clip" else 0.0
    expected_cos = (logits - bias) / model.logit_scale.exp()
    torch.testing.assert_close(cos, expected_cos, atol=1e-5, rtol=1e-4)
    assert torch.equal(cos.argmax(-1), logits.argmax(-1))
    assert len(set(cos.argmax(-1).tolist())) > 1  # the comparison is not between constant predictions


def test_siglip2_naflex_inputs_equal_the_processor_output(tiny, adapters, images):
    import transformers as tf

    adapter = adapters["siglip2"]
    processor = tf.AutoProcessor.from_pretrained(tiny["siglip2"])
    expected = processor(images=images, return_tensors="pt", **naflex_kwargs(processor, "siglip2"))
    got = adapter.image_inputs(torch.stack([adapter.preprocess(im) for im in images]))
    n = got["pixel_values"].shape[1]
    assert n == adapter.patch_grid[0] * adapter.patch_grid[1] == 64
    assert torch.equal(got["pixel_values"], expected["pixel_values"][:, :n])
    assert torch.equal(got["spatial_shapes"], expected["spatial_shapes"])
    assert bool(got["pixel_attention_mask"].all()) and bool(expected["pixel_attention_mask"][:, :n].all())
    wide = make_image((10, 200, 10), 40).resize((60, 20))
    assert adapter.preprocess(wide).shape == (3, 32, 32)  # one grid for every image, whatever its shape


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_siglip_text_is_padded_to_max_length(family, adapters):
    adapter = adapters[family]
    texts = ["a photo of a cat.", "a dog"]
    padded = adapter.tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")
    shortest = adapter.tokenizer(texts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        want = features(adapter.model.get_text_features(input_ids=padded["input_ids"]))  # no text mask
        wrong = features(adapter.model.get_text_features(input_ids=shortest["input_ids"]))
    got = adapter.encode_texts(texts)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, wrong, atol=1e-3)  # the trap is real: shorter padding changes the embedding


@pytest.mark.parametrize("family", FAMILIES)
def test_accepts_transformers_4_tensor_outputs(family, adapters, images, monkeypatch):
    adapter = adapters[family]
    pixels = torch.stack([adapter.preprocess(im) for im in images[:2]])
    img5, txt5 = adapter.encode_images(pixels), adapter.encode_texts(["a cat"])
    model = adapter.model
    as_tensor = {name: getattr(model, name) for name in ("get_image_features", "get_text_features")}
    for name, fn in as_tensor.items():  # 4.x: the methods return the embedding tensor itself
        monkeypatch.setattr(model, name, lambda *a, _fn=fn, **k: _fn(*a, **k).pooler_output)
    assert torch.equal(adapter.encode_images(pixels), img5)
    assert torch.equal(adapter.encode_texts(["a cat"]), txt5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_precision_and_picklable_preprocess(family, tiny, adapters, images):
    fp32 = adapters[family]
    bf16 = load_model(f"hf:{tiny[family]}", precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    preprocess = pickle.loads(pickle.dumps(bf16.preprocess))  # DataLoader workers receive it pickled
    pixels = torch.stack([preprocess(im) for im in images])
    assert torch.equal(pixels, torch.stack([fp32.preprocess(im) for im in images]))
    got, want = bf16.encode_images(pixels), fp32.encode_images(pixels)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert F.cosine_similarity(got, want).min() > 0.98
    text = bf16.encode_texts(["a photo of a cat."])
    assert text.dtype == torch.float32 and F.cosine_similarity(text, fp32.encode_texts(["a photo of a cat."])) > 0.98


def test_cache_dir_is_honoured(tiny, adapters, images, tmp_path):
    cache = as_hub_cache(tiny["siglip"], tmp_path / "cache", "tiny-org/siglip")
    adapter = load_model("hf:tiny-org/siglip", cache_dir=str(cache))  # offline: only the cache can serve it
    pixels = torch.stack([adapter.preprocess(im) for im in images])
    assert torch.equal(adapter.encode_images(pixels), adapters["siglip"].encode_images(pixels))


def test_download_failure_names_model_stage_cache_and_local_alternative(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_model("hf:nobody-org/no-such-model", cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "nobody-org/no-such-model" in msg and "config" in msg
    assert str(tmp_path) in msg and "hf:/path/to/DIR" in msg and "save_pretrained" in msg


def test_missing_local_folder_and_unsupported_architecture(tmp_path):
    import transformers as tf

    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model(f"hf:{tmp_path / 'nope'}")
    tf.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelLoadError, match="'vit' model.*clip, siglip, siglip2"):
        load_model(f"hf:{tmp_path / 'vit'}")


def test_plugin_module_imports_no_torch():
    code = (
        "import sys, covar_harness_plugins.transformers, covar_harness_plugins.custom, covar_harness_plugins.paper;"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; sys.exit(str(bad) if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow  # a real process: HF_HOME is read once, when huggingface_hub is imported
def test_all_families_run_end_to_end_through_the_cli(tiny, tmp_path, image_folder):
    """clip and siglip from folders, siglip2 by hub id from an HF_HOME cache: valid result files for all three."""
    hf_home = tmp_path / "hf_home"
    as_hub_cache(tiny["siglip2"], hf_home / "hub", "tiny-org/siglip2")
    task = write_task_yaml(tmp_path / "tasks" / "toy.yaml", "toy/colours", image_folder)
    specs = [f"hf:{tiny['clip']}", f"hf:{tiny['siglip']}", "hf:tiny-org/siglip2"]
    out = tmp_path / "out"
    proc = cli(
        "run",
        "--models",
        ",".join(specs),
        "--tasks",
        "toy/colours",
        "--include-path",
        str(task),
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "5",
        env={"HF_HOME": str(hf_home), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(out.glob("*/toy*.json"))
    assert len(files) == 3, files
    for f in files:
        record = json.loads(f.read_text())
        assert validation.validate(record) == [], f
        assert record["model"]["family"] == "hf" and record["task"]["n_samples"] == 12
    assert {json.loads(f.read_text())["model"]["spec"] for f in files} == set(specs)
