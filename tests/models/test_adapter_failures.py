"""Issue 12, model side: SigLIP text without an attention mask, an unreachable hub said in one line with the way to
fail fast, built-in adapters declaring pattern batches and their block count, layers never wrapped silently, and
patch-count hints read from configs without loading weights. Offline, CPU, tiny models built in the test."""

from __future__ import annotations

import pytest
import torch

from covar_harness.attribution import AttributionStep
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.models import specs as models
from covar_harness.models.specs import HubUnreachableError, ModelLoadError, hub_unreachable, load_model
from covar_harness.pipeline.contract import PairContext
from covar_harness_plugins.transformers import features
from hf_helpers import FAMILIES, adapters, one_thread, tiny  # noqa: F401 (fixtures)

TEXTS = ["a photo of a cat.", "a dog"]


# ---- item 4: SigLIP / SigLIP2 text towers get input_ids only ------------------------------------------------
@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_siglip_text_is_encoded_without_the_attention_mask(family, adapters):
    adapter = adapters[family]
    tokens = adapter.tokenizer(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert "attention_mask" in tokens and not bool(tokens["attention_mask"].all())  # the tokenizer returns one
    with torch.no_grad():
        want = features(adapter.model.get_text_features(input_ids=tokens["input_ids"]))
        masked = features(adapter.model.get_text_features(**tokens))
    got = adapter.encode_texts(TEXTS)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, masked, atol=1e-3)  # the mask really changes the embedding


def test_clip_text_keeps_its_attention_mask(adapters):
    adapter = adapters["clip"]
    tokens = adapter.tokenizer(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        want = features(adapter.model.get_text_features(**tokens))
    torch.testing.assert_close(adapter.encode_texts(TEXTS), want, atol=1e-6, rtol=1e-5)


# ---- built-in adapters: pattern batches, block counts, no silently wrapped layer ------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_hf_adapters_declare_pattern_batches_and_refuse_out_of_range_layers(family, adapters):
    adapter = adapters[family]
    assert adapter.supports_pattern_batches is True and adapter.n_blocks == 2
    pixels = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(adapter.patch_tokens(pixels, layer=-2), adapter.patch_tokens(pixels, layer=0))
    for layer in (2, 7, -3):  # 7 % 2 == 1 used to give the last block without a word
        with pytest.raises(IndexError, match="out of range for 2 blocks"):
            adapter.patch_tokens(pixels, layer=layer)
    samples = SampleSet([Sample("a.png", 0)], ["a"], None)
    with pytest.raises(ValueError, match=r"--cci-layer 7 is out of range .* 2 blocks"):
        AttributionStep("cci", layer=7).start(PairContext(adapter, None, samples))
    AttributionStep("cci", layer=-2).start(PairContext(adapter, None, samples))


def test_openclip_adapter_declares_pattern_batches_and_blocks(openclip_dir):
    adapter = load_model(f"openclip:local-dir:{openclip_dir}")
    assert adapter.supports_pattern_batches is True and adapter.n_blocks == 2
    samples = SampleSet([Sample("a.png", 0)], ["a"], None)
    with pytest.raises(ValueError, match="--cci-layer -3 is out of range"):
        AttributionStep("cci", layer=-3, k=3).start(PairContext(adapter, None, samples))
    with pytest.raises(ValueError, match="--cci-k 17 is more than the 16 patches"):
        AttributionStep("cci", k=17).start(PairContext(adapter, None, samples))


# ---- patch counts before any weights load -------------------------------------------------------------------
def test_openclip_patch_count_hint_from_configs(openclip_dir):
    from covar_harness_plugins.openclip import patch_count_hint

    assert patch_count_hint("openclip:ViT-B-32/openai") == 49
    assert patch_count_hint("ViT-B-16-SigLIP/webli") == 196  # timm tower: patch size from its name
    assert patch_count_hint("openclip:ViT-L-14-336/openai") == 576
    for unknown in (
        "openclip:RN50/openai",
        "openclip:convnext_base_w/laion2b",
        "openclip:hf-hub:org/x",
        "openclip:no-such-arch/x",
    ):
        assert patch_count_hint(unknown) is None, unknown
    adapter = load_model(f"openclip:local-dir:{openclip_dir}")
    spec = f"openclip:local-dir:{openclip_dir}"
    grid = adapter.patch_grid
    assert patch_count_hint(spec) == models.patch_count_hint(spec) == 16 == grid[0] * grid[1]


def test_hf_patch_count_hint_for_local_folders(tiny, adapters):
    for family in FAMILIES:
        grid = adapters[family].patch_grid
        assert models.patch_count_hint(f"hf:{tiny[family]}") == grid[0] * grid[1], family
    assert models.patch_count_hint("hf:google/siglip-base-patch16-224") is None  # a hub id: not without network
    assert models.patch_count_hint("no-such-model") is None


# ---- item 18: an unreachable hub ------------------------------------------------------------------------------
@pytest.fixture
def online(monkeypatch):
    """The hub client believes it is online (the tests themselves never touch the network)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def network_errors() -> list[BaseException]:
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError

    wrapped = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    wrapped.__cause__ = LocalEntryNotFoundError("cannot find the requested files in the local cache")
    return [
        requests.ConnectionError("Max retries exceeded"),
        requests.Timeout("read timed out"),
        requests.exceptions.ConnectTimeout("x"),
        LocalEntryNotFoundError("no connection"),
        wrapped,
        OSError("Failed to establish a new connection"),
        OSError("you are offline"),
        ConnectionRefusedError(111),
        TimeoutError("timed out"),
    ]


def test_network_errors_are_recognised_only_when_online(online, monkeypatch):
    for exc in network_errors():
        assert hub_unreachable(exc), repr(exc)
    for exc in (
        ValueError("bad config"),
        FileNotFoundError("no such file: x.json"),
        OSError("is not a valid model identifier"),
        FileNotFoundError("No such file: '/data/offline_models/connectivity.json'"),
    ):
        assert not hub_unreachable(exc), repr(exc)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode: the same errors mean a cache miss
    assert not any(hub_unreachable(exc) for exc in network_errors())


def assert_one_line_advice(err: HubUnreachableError, spec: str, cache: str) -> None:
    msg = str(err)
    assert "\n" not in msg and msg.startswith(spec) and "unreachable" in msg
    assert "HF_HUB_OFFLINE=1" in msg and cache in msg
    assert (
        err.advice == f"the Hugging Face hub is unreachable; set HF_HUB_OFFLINE=1 to fail fast and use the local "
        f"cache ({cache})"
    )


def test_hf_loader_says_the_hub_is_unreachable(online, monkeypatch, tmp_path):
    import requests
    import transformers

    def refuse(*args, **kwargs):
        raise requests.ConnectionError("HTTPSConnectionPool(host='huggingface.co'): Max retries exceeded")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    with pytest.raises(HubUnreachableError) as err:
        load_model("hf:google/siglip-base-patch16-224", cache_dir=str(tmp_path))
    assert_one_line_advice(err.value, "hf:google/siglip-base-patch16-224", str(tmp_path))
    assert isinstance(err.value, ModelLoadError)  # callers catching ModelLoadError still do


def test_openclip_loader_says_the_hub_is_unreachable(online, monkeypatch, tmp_path):
    import open_clip
    from huggingface_hub.errors import LocalEntryNotFoundError

    def refuse(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", refuse)
    with pytest.raises(HubUnreachableError) as err:
        load_model("openclip:ViT-B-32/laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert_one_line_advice(err.value, "openclip:ViT-B-32/laion2b_s34b_b79k", str(tmp_path))


def test_any_loader_failing_on_the_network_gets_the_advice(online, tmp_path):
    from huggingface_hub import constants

    path = tmp_path / "net_model.py"
    path.write_text("def build():\n    raise ConnectionRefusedError(111, 'Connection refused')\n")
    with pytest.raises(HubUnreachableError) as err:
        load_model(f"custom:{path}:build")
    assert_one_line_advice(err.value, f"custom:{path}:build", str(constants.HF_HUB_CACHE))


def test_offline_mode_keeps_the_cache_miss_message(tmp_path):
    with pytest.raises(ModelLoadError) as err:  # conftest sets HF_HUB_OFFLINE=1
        load_model("hf:nobody-org/no-such-model", cache_dir=str(tmp_path))
    assert not isinstance(err.value, HubUnreachableError) and "nobody-org/no-such-model" in str(err.value)


def test_groundedsam_says_the_hub_is_unreachable(online, monkeypatch, tmp_path):
    import requests
    import transformers

    from covar_harness_plugins.segmenters import GroundedSAMSegmenter

    def refuse(*args, **kwargs):
        raise requests.ConnectionError("Max retries exceeded")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    segmenter = GroundedSAMSegmenter(cache_dir=tmp_path, device="cpu")
    with pytest.raises(HubUnreachableError, match="HF_HUB_OFFLINE=1"):
        segmenter._load()


# ---- neighbours: user adapter code failing, explain's model failures ------------------------------------------
def test_custom_adapter_code_that_raises_is_one_line(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("def build():\n    return 1 / 0\n")
    with pytest.raises(ModelLoadError) as err:
        load_model(f"custom:{crash}:build")
    assert "\n" not in str(err.value) and "calling the adapter failed: ZeroDivisionError" in str(err.value)
    broken = tmp_path / "broken_syntax.py"
    broken.write_text("def build(:\n")
    with pytest.raises(ModelLoadError, match="importing the adapter failed: SyntaxError"):
        load_model(f"custom:{broken}:build")


def test_explain_model_failure_is_one_line_exit_2(tmp_path, capsys):
    from covar_harness.cli.main import main
    from helpers import make_image

    crash = tmp_path / "crash.py"
    crash.write_text("def build():\n    raise RuntimeError('weights are corrupt\\nsecond line')\n")
    image = tmp_path / "img.png"
    make_image((200, 30, 30), 20).save(image)
    code = main(["explain", "--model", f"custom:{crash}:build", "--image", str(image), "--classes", "a,b"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "RuntimeError: weights are corrupt" in err[0]
