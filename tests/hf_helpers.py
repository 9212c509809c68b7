"""Tiny Hugging Face CLIP / SigLIP / SigLIP2 models saved offline, loadable through ``hf:PATH``.

Random weights, hidden size 32, 2 layers, 32 px images in 4 px patches (an 8x8 grid): each builds and saves in
well under a second. Tokenizers are built without the hub: CLIP's from open_clip's bundled BPE merges (in
transformers 5.x the vocab and merges must be passed as objects; file paths silently give all-unknown ids),
SigLIP's trained in memory with ``tokenizers``.
"""

from __future__ import annotations

import gzip
import shutil
from functools import lru_cache
from pathlib import Path

import pytest

FAMILIES = ("clip", "siglip", "siglip2")
IMAGE_SIZE, PATCH = 32, 4
GRID = IMAGE_SIZE // PATCH
TINY_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
SIGLIP_IDS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=1)
CORPUS = [
    "a photo of a cat.",
    "a photo of a dog.",
    "a photo of a fish.",
    "a photo of a bird.",
    "a bad photo of the {}.",
    "an origami red green blue thing",
    "A Photo Of A Cat",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run many small forwards: on a busy 2-core machine two intra-op threads spin-wait for
    each other (measured: 4 s vs 0.04 s for the same 9 calls). Import this fixture into HF test modules."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's BPE vocabulary rebuilt from the merges file shipped inside open_clip (49408 ids)."""
    import open_clip.tokenizer as oct

    lines = gzip.open(oct.default_bpe(), "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    units = list(oct.bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=vocab, merges=merges)


def siglip_tokenizer():
    """A word-level tokenizer trained in memory; pad/eos/unk ids are 0/1/2 as in SigLIP's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=64
    )


def siglip2_tokenizer():
    """SigLIP2's own (Gemma-style, lowercasing, left-padding) tokenizer over a character vocabulary.

    ``Siglip2Processor`` always reloads its tokenizer as ``Siglip2Tokenizer``, so the test one must be that class.
    """
    from transformers import Siglip2Tokenizer

    chars = ["\u2581", ".", ","] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    return Siglip2Tokenizer(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[], model_max_length=64)


def build(family: str, seed: int = 0):
    """(model, processor) for a tiny random model of ``family`` (clip | siglip | siglip2)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    vision = dict(TINY_TOWER, patch_size=PATCH)
    if family == "clip":
        text = dict(TINY_TOWER, vocab_size=49408, max_position_embeddings=77)
        cfg = tf.CLIPConfig(text_config=text, vision_config=dict(vision, image_size=IMAGE_SIZE), projection_dim=16)
        model = tf.CLIPModel(cfg)
        images = tf.CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        processor = tf.CLIPProcessor(image_processor=images, tokenizer=clip_tokenizer())
    elif family == "siglip":
        text = dict(TINY_TOWER, vocab_size=99, max_position_embeddings=64, **SIGLIP_IDS)
        cfg = tf.SiglipConfig(text_config=text, vision_config=dict(vision, image_size=IMAGE_SIZE))
        model = tf.SiglipModel(cfg)
        images = tf.SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        processor = tf.SiglipProcessor(image_processor=images, tokenizer=siglip_tokenizer())
    elif family == "siglip2":
        text = dict(TINY_TOWER, vocab_size=99, max_position_embeddings=64, **SIGLIP_IDS)
        cfg = tf.Siglip2Config(text_config=text, vision_config=dict(vision, num_patches=GRID * GRID))
        model = tf.Siglip2Model(cfg)
        images = tf.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=GRID * GRID)
        processor = tf.Siglip2Processor(image_processor=images, tokenizer=siglip2_tokenizer())
    else:
        raise ValueError(family)
    return model.eval(), processor


def save_tiny(family: str, path: Path, seed: int = 0) -> Path:
    """``save_pretrained`` a tiny model and its processor into ``path`` (the ``hf:PATH`` layout)."""
    model, processor = build(family, seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def as_hub_cache(folder: Path, cache: Path, repo_id: str) -> Path:
    """Lay ``folder`` out as the hub cache entry of ``repo_id`` (what a download would have left there)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    return cache


_TINY: dict[str, dict[str, Path]] = {}  # per pytest session (its base temp dir): family -> saved folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """One saved model per family, built once per session: every module that imports this fixture gets its own
    fixture definition, so the folders are kept here and shared. Use them read-only."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _TINY:
        root = tmp_path_factory.mktemp("hf")
        _TINY[key] = {f: save_tiny(f, root / f, seed=i) for i, f in enumerate(FAMILIES)}
    return _TINY[key]


@pytest.fixture(scope="module")
def adapters(tiny):
    return {f: _load(f"hf:{path}") for f, path in tiny.items()}


def _load(spec: str):
    from covar_harness.models.specs import load_model

    return load_model(spec)
