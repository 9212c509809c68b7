"""The persistent class-text embedding cache: built once per model, shared across runs, never trusted blindly
(issue 16 item 4)."""

import json
import threading

import pytest
import torch

from covar_harness.run.progress import Reporter
from covar_harness.run.text_cache import (
    ClassifierCache,
    TextEmbeddingStore,
    default_text_cache,
    model_fingerprint,
    store_for,
)
from helpers import make_image_folder, write_task_yaml
from helpers import run_cli_inprocess as cli

CLASSES, TEMPLATES = ["cat", "dog", "fish"], ["a photo of a {}.", "a {}."]


class Counting:
    """A text encoder with weights: counts its calls."""

    name = "counting"

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(4, 8)
        self.calls = 0

    def encode_texts(self, texts):
        self.calls += 1
        codes = torch.tensor([[float(sum(map(ord, t)) % 97), len(t), 1.0, 2.0] for t in texts])
        return self.model(codes).detach()


def _store(root, adapter, precision="fp32"):
    return store_for("counting:x", adapter, root, precision)


def test_a_second_cache_makes_no_text_calls_and_gives_the_same_bits(tmp_path):
    first = Counting()
    W1 = ClassifierCache(first, _store(tmp_path, first)).get(CLASSES, TEMPLATES, Reporter())
    second = Counting()  # same weights, a new process in effect
    W2 = ClassifierCache(second, _store(tmp_path, second)).get(CLASSES, TEMPLATES, Reporter())
    assert first.calls > 0 and second.calls == 0
    assert torch.equal(W1, W2) and W2.dtype == torch.float32


def test_other_templates_classes_or_precision_miss(tmp_path):
    adapter = Counting()
    ClassifierCache(adapter, _store(tmp_path, adapter)).get(CLASSES, TEMPLATES, Reporter())
    for classes, templates, precision in (
        (CLASSES, ["{}"], "fp32"),
        (["cat", "dog"], TEMPLATES, "fp32"),
        (CLASSES, TEMPLATES, "bf16"),
    ):
        before = adapter.calls
        ClassifierCache(adapter, _store(tmp_path, adapter, precision)).get(classes, templates, Reporter())
        assert adapter.calls > before


def test_a_different_model_does_not_hit_the_cache(tmp_path):
    a, b = Counting(seed=0), Counting(seed=1)
    ClassifierCache(a, _store(tmp_path, a)).get(CLASSES, TEMPLATES, Reporter())
    ClassifierCache(b, _store(tmp_path, b)).get(CLASSES, TEMPLATES, Reporter())
    assert b.calls > 0


def test_the_fingerprint_follows_the_weights():
    def big(seed=0):
        adapter = Counting()
        torch.manual_seed(seed)
        adapter.model = torch.nn.Linear(64, 64)  # 4096 weights: 64 of them sampled
        return adapter

    a = big()
    base = model_fingerprint("s", a)
    assert base == model_fingerprint("s", big())  # same weights
    assert base != model_fingerprint("s", big(seed=1))
    assert base != model_fingerprint("other-spec", a)
    with torch.no_grad():
        a.model.weight[0, 1] += 1e-3  # one value, not among the sampled ones: the sums see it
    assert model_fingerprint("s", a) != base
    b = big()
    b.model = torch.nn.Linear(64, 65)  # another shape
    assert model_fingerprint("s", b) != base


def test_no_weights_no_disk_cache(tmp_path):
    class Plain:
        def encode_texts(self, texts):
            return torch.ones(len(texts), 3)

    assert model_fingerprint("plain", Plain()) is None
    assert store_for("plain", Plain(), tmp_path, "fp32") is None
    assert store_for("counting", Counting(), None, "fp32") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # a partial write
        lambda b: b[:-4] + b"\0\0\0\0",  # flipped payload bytes
        lambda b: b"garbage" + b[7:],  # no magic line
        lambda b: b"",  # empty
    ],
)
def test_a_corrupt_cache_file_is_recomputed_without_a_crash(tmp_path, damage):
    adapter = Counting()
    store = _store(tmp_path, adapter)
    W1 = ClassifierCache(adapter, store).get(CLASSES, TEMPLATES, Reporter())
    path = store.path(CLASSES, TEMPLATES)
    path.write_bytes(damage(path.read_bytes()))
    again = Counting()
    W2 = ClassifierCache(again, _store(tmp_path, again)).get(CLASSES, TEMPLATES, Reporter())
    assert again.calls > 0 and torch.equal(W1, W2)
    assert store.load(CLASSES, TEMPLATES) is not None  # rewritten whole


def test_a_file_for_another_key_is_not_used(tmp_path):
    adapter = Counting()
    store = _store(tmp_path, adapter)
    ClassifierCache(adapter, store).get(CLASSES, TEMPLATES, Reporter())
    other = store.path(CLASSES, ["{}"])
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(store.path(CLASSES, TEMPLATES).read_bytes())  # right format, wrong key
    assert store.load(CLASSES, ["{}"]) is None


def test_concurrent_writers_leave_one_complete_file(tmp_path):
    store = TextEmbeddingStore(tmp_path, "fp", "fp32")
    W = torch.randn(16, 3)
    threads = [threading.Thread(target=store.save, args=(CLASSES, TEMPLATES, W)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(store.load(CLASSES, TEMPLATES), W)
    assert [p.name for p in store.path(CLASSES, TEMPLATES).parent.iterdir()] == [store.path(CLASSES, TEMPLATES).name]


def test_the_cache_folder_default(monkeypatch, tmp_path):
    monkeypatch.delenv("COVAR_HARNESS_TEXT_CACHE", raising=False)
    assert default_text_cache(None).parts[-2:] == ("covar-harness", "text-embeddings")
    monkeypatch.setenv("COVAR_HARNESS_TEXT_CACHE", str(tmp_path))
    assert default_text_cache(None) == tmp_path
    assert default_text_cache("none") is None and default_text_cache(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.setenv("COVAR_HARNESS_TEXT_CACHE", "none")
    assert default_text_cache(None) is None


def test_a_second_run_encodes_no_text(openclip_dir, tmp_path, monkeypatch):
    from covar_harness_plugins.openclip import OpenClipAdapter

    calls = []
    real = OpenClipAdapter.encode_texts

    def counting(self, texts):
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(OpenClipAdapter, "encode_texts", counting)
    folder = make_image_folder(tmp_path / "imgs", per_class=1)
    task = write_task_yaml(tmp_path / "t.yaml", "toy/t", folder)
    args = ["run", "--models", f"openclip:local-dir:{openclip_dir}", "--tasks", str(task), "--workers", "0"]
    args += ["--attribution", "none", "--text-cache", str(tmp_path / "cache"), "--overwrite", "--output-dir"]
    assert cli(*args, str(tmp_path / "a")).returncode == 0
    first = len(calls)
    assert first > 0
    assert cli(*args, str(tmp_path / "b")).returncode == 0
    assert len(calls) == first  # zero encode_texts calls in the second run
    a, b = (json.loads(next((tmp_path / d).rglob("*.json")).read_text()) for d in "ab")
    assert a["metrics"] == b["metrics"]
