"""Issue 12, attribution side: adapters written to the public (B, N) ``encode_images_without`` contract, shape
checks with one-line failures, K validated before any model loads and against the patch count when a model
starts, no 2^K table for plain CCI, ``--save-maps`` folders named like result folders, untrusted names in
``explain`` output, and memory bounds driven by user settings. Offline, CPU, tiny toys."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from covar_harness import attribution
from covar_harness.attribution import AttributionStep, CCISettings
from covar_harness.attribution.engine import attribute, sample_seed
from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import slug
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.models.adapter import AdapterContractError
from covar_harness.models.specs import load_model
from covar_harness.pipeline.contract import Batch, PairContext, Pipeline
from covar_harness.results import files as results
from covar_harness.results.maps import MapStep
from helpers import patch_everywhere

# A toy written to the DOCUMENTED contract only: drop (B, N) -> (B, D). Given (B, K, N) it fails to broadcast,
# exactly like the third-party adapter of the issue. 20 px images in 4 px patches: a 5 x 5 grid, 25 patches.
ADAPTER_SOURCE = textwrap.dedent('''
    import zlib

    import numpy as np
    import torch

    SIDE, PATCH, D = 20, 4, 6
    GRID = SIDE // PATCH


    class OldStyle:
        name = "old-style"

        def __init__(self):
            self.patch_grid = (GRID, GRID)
            self.calls = []
            g = torch.Generator().manual_seed(0)
            self.proj = torch.randn(3 * PATCH * PATCH, D, generator=g)
            self.bias = torch.randn(D, generator=g)

        def preprocess(self, image):
            data = torch.from_numpy(np.asarray(image.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32).copy())
            return data.permute(2, 0, 1) / 255

        def patch_tokens(self, pixels, layer=-1):
            p = pixels.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (B, 3, g, g, P, P)
            return p.permute(0, 2, 3, 1, 4, 5).reshape(pixels.shape[0], GRID * GRID, -1)

        def _pool(self, pixels, keep):  # keep (B, N): a non-linear pooling, so every pattern matters
            t = self.patch_tokens(pixels) @ self.proj
            w = keep.float()
            return torch.tanh((t * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1) + self.bias)

        def encode_images(self, pixels):
            return self._pool(pixels, torch.ones(pixels.shape[0], GRID * GRID, dtype=torch.bool))

        def encode_images_without(self, pixels, drop):
            self.calls.append(tuple(drop.shape))
            return self._pool(pixels, ~drop)

        def encode_texts(self, texts):
            return torch.stack([torch.randn(D, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                                for t in texts])


    class Batched(OldStyle):
        """The same model declaring (B, K, N) pattern batches (it loops over K itself)."""

        supports_pattern_batches = True

        def encode_images_without(self, pixels, drop):
            self.calls.append(tuple(drop.shape))
            if drop.dim() == 2:
                return self._pool(pixels, ~drop)
            return torch.stack([self._pool(pixels, ~drop[:, k]) for k in range(drop.shape[1])], dim=1)


    class WrongShape(OldStyle):
        def encode_images_without(self, pixels, drop):
            return super().encode_images_without(pixels, drop)[:1]


    class Evil(OldStyle):
        name = "[bold]evil[/x] \\x1b[31mred"


    def build():
        return OldStyle()


    def batched():
        return Batched()


    def wrong():
        return WrongShape()


    def evil():
        return Evil()
''')


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich wraps at 80 columns when not on a terminal: keep each message on one line for the assertions."""
    monkeypatch.setenv("COLUMNS", "400")


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toys") / "old_style_adapter.py"
    path.write_text(ADAPTER_SOURCE)
    return path


def toy(toy_file: Path, factory: str = "build"):
    return load_model(f"custom:{toy_file}:{factory}")


def batch_inputs(adapter, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, 20, 20, generator=g)
    emb = F.normalize(adapter.encode_images(pixels), dim=-1)
    # texts near the images (|s| well away from 0: importances divide by it)
    text = F.normalize(emb + 0.5 * F.normalize(adapter.encode_texts([f"class {i}" for i in range(n)]), dim=-1), dim=-1)
    return pixels, emb, text, torch.arange(n), [sample_seed(0, f"img{i}") for i in range(n)]


def one_pattern_at_a_time(adapter, pixels, emb, text, assignments, k: int) -> torch.Tensor:
    """CCI's importances computed the slow, obvious way: one (1, N) call per image and cluster."""
    out = torch.zeros(len(pixels), k)
    for b in range(len(pixels)):
        s = float(emb[b] @ text[b])
        for j in range(k):
            drop = assignments[b] == j
            if drop.any() and not drop.all():
                without = F.normalize(adapter.encode_images_without(pixels[b : b + 1], drop[None]), dim=-1)[0]
                out[b, j] = (s - float(without @ text[b])) / abs(s)
    return out


# ---- item 3: the public (B, N) contract -------------------------------------------------------------------------
def test_old_style_adapter_gets_b_n_calls_and_the_same_importances(toy_file):
    adapter = toy(toy_file)
    pixels, emb, text, target, seeds = batch_inputs(adapter)
    result = attribute(adapter, pixels, emb, text, target, seeds, CCISettings(k=7))
    assert all(len(shape) == 2 for shape in adapter.calls), adapter.calls  # never (B, K, N)
    want = one_pattern_at_a_time(adapter, pixels, emb, text, result.assignments, 7)
    torch.testing.assert_close(result.importance, want, atol=1e-6, rtol=1e-5)
    assert result.importance.abs().max() > 1e-3  # not a comparison of zeros


def test_declared_pattern_batches_get_one_call_and_agree_with_the_flattened_path(toy_file):
    old, new = toy(toy_file), toy(toy_file, "batched")
    pixels, emb, text, target, seeds = batch_inputs(old)
    fg = torch.rand(3, 25)
    classifier = text.T
    a = attribute(old, pixels, emb, text, target, seeds, CCISettings(k=3), "cci-shapley", fg=fg, classifier=classifier)
    b = attribute(new, pixels, emb, text, target, seeds, CCISettings(k=3), "cci-shapley", fg=fg, classifier=classifier)
    assert new.calls == [(3, 2**3 + 2, 25)]  # one batched call: 8 coalitions + 2 region patterns
    assert old.calls == [(30, 25)]  # flattened: (B * K, N) with the pixels repeated per pattern
    torch.testing.assert_close(a.importance, b.importance, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.shapley.values, b.shapley.values, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.regions.s_fg_only, b.regions.s_fg_only, atol=1e-6, rtol=1e-5, equal_nan=True)


def test_flattened_calls_are_chunked(toy_file):
    """2^7 coalitions for 2 images are 256 rows: sent in calls of at most max(B, PATTERN_ROWS) rows, so the
    repeated pixels never exist all at once."""
    old, new = toy(toy_file), toy(toy_file, "batched")
    pixels, emb, text, target, seeds = batch_inputs(old, n=2)
    a = attribute(old, pixels, emb, text, target, seeds, CCISettings(k=7), "cci-shapley")
    b = attribute(new, pixels, emb, text, target, seeds, CCISettings(k=7), "cci-shapley")
    assert max(shape[0] for shape in old.calls) <= attribution.removal.PATTERN_ROWS and len(old.calls) == 4
    torch.testing.assert_close(a.shapley.values, b.shapley.values, atol=1e-6, rtol=1e-5)


def test_wrong_shape_fails_with_one_line_naming_adapter_method_and_shapes(toy_file):
    adapter = toy(toy_file, "wrong")
    pixels, emb, text, target, seeds = batch_inputs(adapter)
    with pytest.raises(AdapterContractError) as err:
        attribute(adapter, pixels, emb, text, target, seeds, CCISettings(k=4))
    msg = str(err.value)
    assert "\n" not in msg and "old-style" in msg and "encode_images_without" in msg
    assert "(1, 6)" in msg and "(12, 6)" in msg  # actual and expected: 3 images x 4 clusters, D = 6


def test_declared_batches_returning_the_wrong_shape_fail_the_same_way(toy_file):
    adapter = toy(toy_file, "batched")
    adapter.encode_images_without = lambda pixels, drop: torch.zeros(len(pixels), 6)  # ignores K
    pixels, emb, text, target, seeds = batch_inputs(adapter)
    with pytest.raises(
        AdapterContractError,
        match=r"encode_images_without returned shape \(3, 6\), expected "
        r"\(3, 4, 6\)",
    ):
        attribute(adapter, pixels, emb, text, target, seeds, CCISettings(k=4))


def test_patch_tokens_and_patch_grid_are_checked(toy_file):
    adapter = toy(toy_file)
    pixels, emb, text, target, seeds = batch_inputs(adapter)
    adapter.patch_grid = (4, 4)  # 16, but patch_tokens gives 25
    with pytest.raises(
        AdapterContractError, match=r"patch_tokens returned shape \(3, 25, 48\), expected \(3, 16, \*\)"
    ):
        attribute(adapter, pixels, emb, text, target, seeds, CCISettings(k=4))
    adapter.patch_grid = "5x5"
    with pytest.raises(AdapterContractError, match="patch_grid must be"):
        AttributionStep("cci").start(PairContext(adapter, None, SampleSet([Sample("a.png", 0)], ["a"], None)))


def test_old_style_adapter_runs_cci_end_to_end(toy_file, task_yaml, tmp_path, capsys):
    from covar_harness.cli.main import main

    out = tmp_path / "res"
    spec = f"custom:{toy_file}:build"
    code = main(
        [
            "run",
            "--models",
            spec,
            "--tasks",
            str(task_yaml),
            "--output-dir",
            str(out),
            "--workers",
            "0",
            "--attribution",
            "cci",
            "--cci-k",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    record = results.load(results.result_path(out, spec, "toy/shapes"))
    assert record["config"]["attribution"]["status"] == "ran"
    code = main(
        [
            "run",
            "--models",
            f"custom:{toy_file}:wrong",
            "--tasks",
            str(task_yaml),
            "--output-dir",
            str(out),
            "--workers",
            "0",
            "--attribution",
            "cci",
            "--cci-k",
            "3",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "encode_images_without returned shape (1, 6), expected (36, 6)" in err  # 12 images x 3 clusters


# ---- item 10: K validated up front, no 2^K table for plain CCI -----------------------------------------------
def test_plain_cci_never_builds_the_coalition_table(toy_file, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("coalition table built for plain CCI")

    monkeypatch.setattr(attribution.shapley, "coalition_patterns", boom)
    monkeypatch.setattr(attribution.shapley, "coalition_table", boom)
    adapter = toy(toy_file, "batched")
    pixels, emb, text, target, seeds = batch_inputs(adapter, n=2)
    for method in ("cci", "random"):
        result = attribute(adapter, pixels, emb, text, target, seeds, CCISettings(k=23), method)
        assert result.importance.shape == (2, 23)


@pytest.mark.parametrize(
    "method, k", [("cci", 65), ("cci", 1), ("random", 65), ("cci-shapley", 11), ("cci", 7.5), ("cci", True)]
)
def test_k_outside_the_method_range_is_a_usage_error_at_construction(method, k):
    with pytest.raises(UsageError) as err:
        AttributionStep(method, k=k)
    assert "\n" not in str(err.value) and "--cci-k" in str(err.value)


def test_each_attributor_declares_its_k_range():
    from covar_harness.catalog.plugin_manager import load_catalog

    catalog = load_catalog(allow="")
    ranges = {
        name: catalog.attributors.entry(name).extra["k_range"]
        for name in ("cci", "cci-shapley", "random", "random-patch")
    }
    assert ranges == {name: attribution.base.find_attributor(name).k_range for name in ranges}  # the class declares it
    for name, (lo, hi) in ranges.items():
        AttributionStep(name, k=lo), AttributionStep(name, k=hi)  # the bounds themselves are allowed


@pytest.mark.parametrize(
    "setting",
    [{"kmeans_n_init": 0}, {"kmeans_n_init": 1000}, {"kmeans_iters": 0}, {"kmeans_iters": 10**9}, {"layer": "last"}],
)
def test_nonsensical_kmeans_settings_are_usage_errors(setting):
    with pytest.raises(UsageError):
        AttributionStep("cci", **setting)


@pytest.mark.parametrize(
    "flags", [["--cci-k", "65"], ["--cci-k", "11", "--attribution", "cci-shapley"], ["--cci-n-init", "1000"]]
)
def test_cli_exits_2_before_any_model_loads(flags, task_yaml, tmp_path, monkeypatch, capsys):
    from covar_harness.cli.main import main
    from covar_harness.models import specs as models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    patch_everywhere(monkeypatch, models, "load_model", no_load)
    args = [
        "run",
        "--models",
        "openclip:ViT-B-32/openai",
        "--tasks",
        str(task_yaml),
        "--output-dir",
        str(tmp_path / "res"),
        "--attribution",
        "cci",
        *flags,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a model was loaded" not in err[0]


def test_k_above_the_patch_count_fails_at_start_with_one_line(toy_file, task_yaml, tmp_path, capsys):
    adapter = toy(toy_file)
    samples = SampleSet([Sample("a.png", 0)], ["a"], None)
    step = AttributionStep("cci", k=30)
    with pytest.raises(ValueError, match=r"--cci-k 30 is more than the 25 patches of old-style"):
        step.start(PairContext(adapter, None, samples))
    AttributionStep("cci", k=25).start(PairContext(adapter, None, samples))  # exactly the patch count is fine
    off = AttributionStep("cci", k=30, only_with_masks=True)
    off.start(PairContext(adapter, None, samples))  # switched off (no masks): nothing to refuse
    assert off.status == "off"

    from covar_harness.cli.main import main

    code = main(
        [
            "run",
            "--models",
            f"custom:{toy_file}:build",
            "--tasks",
            str(task_yaml),
            "--output-dir",
            str(tmp_path / "res"),
            "--workers",
            "0",
            "--attribution",
            "cci",
            "--cci-k",
            "30",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "--cci-k 30 is more than the 25 patches" in err


def test_kmeans_split_over_images_gives_the_same_clusters(monkeypatch):
    """A huge n_init x batch no longer materialises one (B * n_init, N, C) copy: split above a byte budget,
    with exactly the clusters of the one-piece run."""
    x = torch.randn(5, 30, 8, generator=torch.Generator().manual_seed(3))
    seeds = [11, 12, 13, 14, 15]
    whole = attribution.kmeans.batched_kmeans(x, 4, seeds, n_init=3)
    monkeypatch.setattr(attribution.kmeans, "KMEANS_BUDGET_BYTES", 2 * 3 * 30 * 8 * 4)  # two images per piece
    split = attribution.kmeans.batched_kmeans(x, 4, seeds, n_init=3)
    assert torch.equal(whole.labels, split.labels)
    torch.testing.assert_close(whole.inertia, split.inertia)


# ---- item 21: --save-maps folders are the result folders' slugs -----------------------------------------------
def _maps_pipeline(adapter, task, samples, spec, root):
    """Attribution, then the maps step that draws what it leaves on the batch, started on one pair."""
    maps = MapStep(root)
    pipeline = Pipeline([AttributionStep("cci", k=3, save_maps=root), maps])
    pipeline.start(PairContext(adapter, task, samples, model_spec=spec))
    return pipeline, maps


def test_maps_folder_uses_the_model_spec_slug_like_the_result_folder(toy_file, tmp_path):
    adapter = toy(toy_file)
    spec = f"custom:{toy_file}:build"  # an absolute path: the maps must not invent their own mangling
    task = type("Task", (), {"task": "toy/maps task"})()
    samples = SampleSet([Sample(f"img{i}.png", 0) for i in range(2)], ["a", "b"], None)
    pipeline, maps = _maps_pipeline(adapter, task, samples, spec, tmp_path / "maps")
    pixels, emb, text, _, _ = batch_inputs(adapter, n=2)
    pipeline.process(Batch([0, 1], pixels, emb, text.T, emb @ text.T, torch.tensor([0, 1]), samples))
    folder = tmp_path / "maps" / slug(spec) / slug("toy/maps task")
    assert maps.folder() == folder
    assert results.result_path(tmp_path / "maps", spec, "toy/maps task").parent == folder.parent
    names = sorted(p.name for p in folder.iterdir())  # <index>_<correct|wrong>_<stem>.png (issue 17 item 4)
    assert [n.split("_")[0] + "_" + n.split("_")[-1] for n in names] == ["000000_img0.png", "000001_img1.png"]
    assert all(n.split("_")[1] in ("correct", "wrong") for n in names)


def test_save_maps_under_a_regular_file_is_refused_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        AttributionStep("cci", save_maps=blocker / "maps")


def test_a_map_that_cannot_be_written_is_a_note_not_a_failed_pair(toy_file, tmp_path, monkeypatch):
    from covar_harness.attribution import overlays

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(overlays, "save_overlay", full_disk)
    adapter = toy(toy_file)
    samples = SampleSet([Sample(f"img{i}.png", 0) for i in range(2)], ["a", "b"], None)
    pipeline, maps = _maps_pipeline(adapter, None, samples, "toy", tmp_path / "maps")
    pixels, emb, text, _, _ = batch_inputs(adapter, n=2)
    pipeline.process(Batch([0, 1], pixels, emb, text.T, emb @ text.T, torch.tensor([0, 1]), samples))
    attribution, drawn = pipeline.finish()
    assert len(attribution.records) == 2 and attribution.summary.config["status"] == "ran"
    assert drawn.summary.config is not None and drawn.summary.config["n_maps"] == 0
    assert "No space left" in drawn.summary.config["error"] and maps.error is not None
    assert any(n.startswith("--save-maps stopped") for n in drawn.summary.notes)


# ---- item 13: untrusted names in explain -------------------------------------------------------------------
def test_explain_prints_markup_and_control_characters_inertly(toy_file, tmp_path, capsys):
    from covar_harness.cli.main import main
    from helpers import make_image

    image = tmp_path / "[red]img.png"
    make_image((200, 30, 30), 20).save(image)
    code = main(
        [
            "explain",
            "--model",
            f"custom:{toy_file}:evil",
            "--image",
            str(image),
            "--classes",
            "cat[/x],dog [blink]",
            "--out",
            str(tmp_path / "o.png"),
            "--k",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "o.png").is_file()
    assert "[bold]evil[/x]" in out and "\x1b" not in out  # markup shown literally, the escape stripped
    assert "[red]img.png" in out and ("cat[/x]" in out or "dog [blink]" in out)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--k", "65"], "--cci-k 65"),
        (["--k", "30"], "25 patches"),
        (["--mask", "missing.png"], "mask"),
        (["--target", "c"], "--target 'c' is not one of --classes"),
        (["--label", "a", "--target", "b"], "give --label the same class"),
        (["--driver-rule", "aera"], "did you mean 'area'"),
    ],
)
def test_explain_refuses_bad_settings_with_one_line(flags, message, toy_file, tmp_path, capsys):
    from covar_harness.cli.main import main
    from helpers import make_image

    image = tmp_path / "img.png"
    make_image((200, 30, 30), 20).save(image)
    code = main(
        [
            "explain",
            "--model",
            f"custom:{toy_file}:build",
            "--image",
            str(image),
            "--classes",
            "a,b",
            "--out",
            str(tmp_path / "o.png"),
            *flags,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_token_removal_driver_refuses_patterns_for_other_images():
    from covar_harness.models.token_removal import encode_without

    def run(x, mask=None):
        return x[:, 0]

    tokens = torch.zeros(2, 1 + 4, 3)
    with pytest.raises(ValueError, match="patterns for 3 images but the pixels hold 2"):
        encode_without(tokens, torch.zeros(3, 2, 4, dtype=torch.bool), 1, run, run)
