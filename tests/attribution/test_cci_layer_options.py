"""CCI's clustering choices (issue 14 item 9): ``--cci-layer embed`` (input-level tokens), ``--cci-normalize``,
cluster-size summaries, and s read from the removal path in bf16/fp16.

Oracles: the input-level tokens are rebuilt here from the tower's own modules (open_clip: conv1, class and
position embeddings, ln_pre; transformers: the encoder's hidden_states[0]), not through the adapter.
"""

from __future__ import annotations

import json

import pytest
import torch

import covar_harness
from covar_harness.attribution.engine import attribute, cluster_patterns, normalize_tokens, reference_from_removal
from covar_harness.attribution.settings import CCISettings
from covar_harness.catalog.registry import UsageError
from helpers import TINY_OPENCLIP_CFG, make_openclip_dir, run_cli_inprocess


@pytest.fixture(scope="module")
def openclip_adapter(tmp_path_factory):
    path = make_openclip_dir(tmp_path_factory.mktemp("layer-opts") / "m", TINY_OPENCLIP_CFG)
    return covar_harness.load_model(f"openclip:local-dir:{path}")


def _pixels(adapter, b: int = 2) -> torch.Tensor:
    size = adapter.model.visual.image_size
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_openclip_input_tokens_equal_a_hand_built_embedding(openclip_adapter):
    v, x = openclip_adapter.model.visual, _pixels(openclip_adapter)
    with torch.no_grad():
        t = v.conv1(x).flatten(2).transpose(1, 2)
        t = torch.cat([v.class_embedding.expand(t.shape[0], 1, -1), t], dim=1) + v.positional_embedding
        want = v.ln_pre(t)[:, 1:]
    got = openclip_adapter.input_tokens(x)
    assert got.shape == (2, openclip_adapter.patch_grid[0] * openclip_adapter.patch_grid[1], want.shape[-1])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_hf_clip_input_tokens_are_the_encoders_input(tmp_path):
    from hf_helpers import save_tiny

    adapter = covar_harness.load_model(f"hf:{save_tiny('clip', tmp_path / 'clip')}")
    size = adapter.model.config.vision_config.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = adapter.model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[0][:, 1:]
    torch.testing.assert_close(adapter.input_tokens(x), want, rtol=0, atol=1e-5)


def test_embed_layer_clusters_the_input_tokens(openclip_adapter):
    """k-means under --cci-layer embed sees exactly input_tokens: the same clusters as clustering them directly."""
    from covar_harness.attribution.kmeans import batched_kmeans

    x = _pixels(openclip_adapter)
    emb = torch.nn.functional.normalize(openclip_adapter.encode_images(x), dim=-1)
    settings = CCISettings(k=3, layer="embed")
    out = attribute(openclip_adapter, x, emb, emb, torch.zeros(2, dtype=torch.long), [1, 2], settings)
    km = batched_kmeans(openclip_adapter.input_tokens(x), 3, [1, 2], settings.kmeans_n_init, settings.kmeans_iters)
    assert torch.equal(out.assignments, km.labels.cpu())
    last = attribute(openclip_adapter, x, emb, emb, torch.zeros(2, dtype=torch.long), [1, 2], CCISettings(k=3))
    assert not torch.equal(out.assignments, last.assignments)  # another layer, other clusters


def test_normalisations_match_their_definitions():
    t = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2)) * 3 + 1
    assert torch.equal(normalize_tokens(t, "none"), t)
    torch.testing.assert_close(normalize_tokens(t, "l2").norm(dim=-1), torch.ones(2, 5))
    centred = t - t.mean(dim=-1, keepdim=True)
    want = centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(normalize_tokens(t, "ln"), want, rtol=0, atol=1e-5)


def test_settings_values_and_resume_compatibility():
    from covar_harness.run.plan import _flat, _with_added_settings

    before = {"steps": {"attribution": {"method": "cci", "k": 7}}}  # a result file written before the flag
    assert _with_added_settings(_flat(before))["steps.attribution.normalize"] == "none"  # = the default: resumes
    assert CCISettings(layer="embed").layer == "embed"
    with pytest.raises(UsageError, match="--cci-normalize"):
        CCISettings(normalize="unit")
    with pytest.raises(UsageError, match="--cci-layer"):
        CCISettings(layer="first")


def test_bad_layer_flag_is_one_line_exit_2(tmp_path):
    out = run_cli_inprocess("run", "--models", "demo/shapes-clean", "--tasks", "covar-shapes/original",
                            "--cci-layer", "first", "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 2
    assert "--cci-layer" in out.stderr and "'first'" in out.stderr
    assert "Traceback" not in out.stderr


def test_adapter_without_input_tokens_is_skipped_with_a_reason(openclip_adapter):
    """An adapter written before input_tokens existed: the step says why instead of failing the pair."""
    from covar_harness.attribution.step import AttributionStep
    from covar_harness.pipeline.contract import PairContext

    class Old:
        name = "old"
        patch_grid = openclip_adapter.patch_grid

        def patch_tokens(self, pixels, layer=-1):
            return openclip_adapter.patch_tokens(pixels, layer)

        def encode_images_without(self, pixels, drop):
            return openclip_adapter.encode_images_without(pixels, drop)

    from covar_harness.attribution.settings import AttributionSettings

    step = AttributionStep(AttributionSettings("cci", CCISettings(k=3, layer="embed")))
    from covar_harness.data.samples import SampleSet

    samples = SampleSet([], ["a"], None)
    step.start(PairContext(Old(), None, samples, ["a"], [], "old"))
    assert not step.active and "input_tokens" in step.reason


def test_reduced_precision_reads_s_from_the_removal_path(tmp_path):
    """In bf16, s (the reference of every I_k) is the all-False removal pattern's similarity, not encode_images'."""
    path = make_openclip_dir(tmp_path / "m", TINY_OPENCLIP_CFG)
    adapter = covar_harness.load_model(f"openclip:local-dir:{path}", precision="bf16")
    assert reference_from_removal(adapter)
    x = _pixels(adapter)
    emb = torch.nn.functional.normalize(adapter.encode_images(x).float(), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(2, emb.shape[-1], generator=torch.Generator().manual_seed(3)))
    out = attribute(adapter, x, emb, text, torch.zeros(2, dtype=torch.long), [1, 2], CCISettings(k=3))
    patterns, valid = cluster_patterns(out.assignments, 3)
    patterns = torch.cat([patterns, torch.zeros_like(patterns[:, :1])], dim=1)  # + the all-False reference row
    rows = torch.nn.functional.normalize(adapter.encode_images_without(x, patterns).float(), dim=-1)
    s_rows = (rows * text[:, None]).sum(-1)
    torch.testing.assert_close(out.s, s_rows[:, -1], rtol=0, atol=1e-6)  # s from the same call as every s_k
    want = (s_rows[:, -1:] - s_rows[:, :-1]) * valid / s_rows[:, -1:].abs()
    torch.testing.assert_close(out.importance, want, rtol=0, atol=1e-5)
    fp32 = covar_harness.load_model(f"openclip:local-dir:{path}")
    assert not reference_from_removal(fp32)


def test_run_records_layer_normalize_and_cluster_shares(tmp_path, covar_shapes_data):
    out = run_cli_inprocess("run", "--models", "demo/shapes-clean", "--tasks", "covar-shapes/original",
                            "--limit", "8", "--cci-layer", "embed", "--cci-normalize", "l2",
                            "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(next(tmp_path.rglob("*.json")).read_text())
    attribution = result["config"]["attribution"]
    assert attribution["layer"] == "embed" and attribution["normalize"] == "l2"
    assert attribution["s_from"] == "encode_images"
    summary = attribution["summary"]
    assert 0 < summary["mean_smallest_cluster_share"] <= summary["mean_largest_cluster_share"] <= 1
    steps = result["config"]["run_settings"]["steps"]
    assert any(s.get("normalize") == "l2" and s.get("layer") == "embed" for s in steps.values())
