"""Issue 13 item 4: the adapter's optional members are declared once, on ``BaseAdapter``, with safe defaults; the
built-in adapters subclass it; a duck-typed adapter without it still works and reads exactly the same through
``covar_harness.models.adapter`` (``capabilities`` and friends), down to identical CCI numbers in a real run."""

from __future__ import annotations

import json
import textwrap

import pytest

from covar_harness import BaseAdapter
from covar_harness.catalog.registry import UsageError
from covar_harness.models.adapter import (
    AdapterContractError,
    Capabilities,
    adapter_family,
    attribution_support,
    capabilities,
    missing_members,
    n_blocks,
    patch_grid,
    takes_layer,
)
from covar_harness.models.specs import load_model
from covar_harness.results import files as results
from helpers import run_cli_inprocess, write_task_yaml

# One toy model, written twice: as a plain object (the Protocol only) and as a BaseAdapter subclass. 20 px images
# in 4 px patches (a 5 x 5 grid); a non-linear pooling of the kept patches, so every removal pattern matters.
TOY_SOURCE = textwrap.dedent('''
    import zlib

    import numpy as np
    import torch

    from covar_harness import BaseAdapter

    SIDE, PATCH, D = 20, 4, 6
    GRID = SIDE // PATCH


    class ToyMaths:
        def __init__(self):
            self.patch_grid = (GRID, GRID)
            g = torch.Generator().manual_seed(0)
            self.proj = torch.randn(3 * PATCH * PATCH, D, generator=g)
            self.bias = torch.randn(D, generator=g)

        def preprocess(self, image):
            data = torch.from_numpy(np.asarray(image.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32).copy())
            return data.permute(2, 0, 1) / 255

        def patch_tokens(self, pixels, layer=-1):
            p = pixels.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)
            return p.permute(0, 2, 3, 1, 4, 5).reshape(pixels.shape[0], GRID * GRID, -1)

        def _pool(self, pixels, keep):
            t = self.patch_tokens(pixels) @ self.proj
            w = keep.float()
            return torch.tanh((t * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1) + self.bias)

        def encode_images(self, pixels):
            return self._pool(pixels, torch.ones(pixels.shape[0], GRID * GRID, dtype=torch.bool))

        def encode_images_without(self, pixels, drop):  # the documented (B, N) form only
            return self._pool(pixels, ~drop)

        def encode_texts(self, texts):
            return torch.stack([torch.randn(D, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                                for t in texts])


    class DuckTyped(ToyMaths):
        name = "toy-duck"


    class Based(ToyMaths, BaseAdapter):
        name = "toy-based"


    class PlainBased(BaseAdapter):
        """Only the required members: a complete adapter without attribution."""

        name = "toy-plain"

        def __init__(self):
            self.maths = ToyMaths()
            self.preprocess = self.maths.preprocess

        def encode_images(self, pixels):
            return self.maths.encode_images(pixels)

        def encode_texts(self, texts):
            return self.maths.encode_texts(texts)


    class Half(BaseAdapter):
        name = "toy-half"

        def preprocess(self, image):
            return None

        def encode_images(self, pixels):
            return None


    def duck():
        return DuckTyped()


    def based():
        return Based()


    def plain():
        return PlainBased()


    def half():
        return Half()
''')


@pytest.fixture
def toy_file(tmp_path):
    path = tmp_path / "toy_models.py"
    path.write_text(TOY_SOURCE)
    return path


def _spec(toy_file, fn: str) -> str:
    return f"custom:{toy_file}:{fn}"


def test_base_class_defaults_make_a_complete_adapter_without_attribution(toy_file):
    adapter = load_model(_spec(toy_file, "plain"))
    assert isinstance(adapter, BaseAdapter) and missing_members(adapter) == []
    assert attribution_support(adapter) == (False, "adapter lacks patch_grid, patch_tokens, encode_images_without")
    assert capabilities(adapter) == Capabilities(
        attribution=False,
        reason="adapter lacks patch_grid, patch_tokens, encode_images_without",
        patch_grid=None,
        n_blocks=None,
        takes_layer=False,
        pattern_batches=False,
        remove_all_patches=False,
    )
    with pytest.raises(NotImplementedError, match="no attribution capability"):
        adapter.patch_tokens(None)
    assert adapter_family(adapter, "custom") == "custom"  # declared without a value: the spec's scheme


def test_an_inherited_placeholder_counts_as_missing(toy_file):
    """A subclass that forgot a required method is refused by name, not accepted and failing mid-run."""
    with pytest.raises(UsageError, match=r"returned a Half, not a ModelAdapter: missing method `encode_texts"):
        load_model(_spec(toy_file, "half"))


def test_duck_typed_and_base_class_adapters_read_the_same(toy_file):
    duck, based = load_model(_spec(toy_file, "duck")), load_model(_spec(toy_file, "based"))
    assert not isinstance(duck, BaseAdapter) and isinstance(based, BaseAdapter)
    expected = Capabilities(
        attribution=True,
        reason="",
        patch_grid=(5, 5),
        n_blocks=None,
        takes_layer=True,
        pattern_batches=False,
        remove_all_patches=False,
    )
    assert capabilities(duck) == capabilities(based) == expected


def test_explicit_no_and_malformed_members():
    class No(BaseAdapter):
        name = "no"
        patch_grid = (2, 2)
        supports_attribution = False

        def patch_tokens(self, pixels, layer=-1): ...

        def encode_images_without(self, pixels, drop, *, allow_empty=False): ...

    assert attribution_support(No()) == (False, "the adapter declares no attribution support")
    No.attribution_unsupported_reason = "convolutional tower"
    assert attribution_support(No()) == (False, "convolutional tower")
    No.patch_grid = "5x5"
    with pytest.raises(AdapterContractError, match="patch_grid must be"):
        patch_grid(No())
    assert capabilities(No()).patch_grid is None
    No.n_blocks = True  # a bool is not a block count
    assert n_blocks(No()) is None


def test_layer_argument_follows_the_one_signature_policy():
    class Old:
        def patch_tokens(self, pixels): ...

    class Kw:
        def patch_tokens(self, pixels, **options): ...

    assert not takes_layer(Old()) and takes_layer(Kw()) and not takes_layer(object())


def test_builtin_adapters_subclass_the_base_class(openclip_dir):
    from covar_harness_plugins.openclip import OpenClipAdapter
    from covar_harness_plugins.transformers import ADAPTERS, HFAdapter

    assert issubclass(OpenClipAdapter, BaseAdapter) and issubclass(HFAdapter, BaseAdapter)
    assert all(issubclass(cls, HFAdapter) for cls in ADAPTERS.values())
    adapter = load_model(f"openclip:local-dir:{openclip_dir}")
    assert adapter_family(adapter, "plugin") == "openclip"
    assert capabilities(adapter) == Capabilities(
        attribution=True,
        reason="",
        patch_grid=(4, 4),
        n_blocks=2,
        takes_layer=True,
        pattern_batches=True,
        remove_all_patches=True,
        attention_trace=True,  # a CLS-readout ViT: the gradient / attention baselines can run
    )


def _cci_records(out, spec: str, task: str) -> list[dict]:
    path = results.samples_path(results.result_path(out, spec, task))
    return [json.loads(line)["cci"] for line in path.read_text().splitlines()]


def test_a_duck_typed_adapter_runs_cci_exactly_like_a_base_class_one(toy_file, tmp_path, image_folder):
    """End to end through the CLI: the same model as a plain object and as a BaseAdapter subclass gives identical
    CCI records; the subclass with the required members only is evaluated with attribution skipped and why."""
    task = write_task_yaml(tmp_path / "tasks" / "toy.yaml", "toy/colours", image_folder)
    out = tmp_path / "out"
    specs = [_spec(toy_file, f) for f in ("duck", "based", "plain")]
    run = run_cli_inprocess(
        "run",
        "--models",
        ",".join(specs),
        "--tasks",
        str(task),
        "--output-dir",
        str(out),
        "--attribution",
        "cci",
        "--cci-k",
        "3",
        "--log-samples",
        "--workers",
        "0",
        "--segmenter",
        "none",
    )
    assert run.returncode == 0, run.stderr
    duck, based = (_cci_records(out, s, "toy/colours") for s in specs[:2])
    assert len(duck) == 12 and duck == based
    plain = results.load(results.result_path(out, specs[2], "toy/colours"))
    assert plain["config"]["attribution"]["status"] == "skipped"
    assert "adapter lacks patch_grid" in plain["config"]["attribution"]["reason"]
