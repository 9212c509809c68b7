"""Train the two bundled demo models, ``demo/shapes-clean`` and ``demo/shapes-shortcut`` (CPU, minutes).

Why two models: the diagnosis must be checked where the truth is known. Both see the same COVAR-Shapes
objects; the clean model sees them on backgrounds drawn independently of the class, the shortcut model sees
class i on background family i with probability ``--shortcut-p`` (0.9), so it learns "class = background".

Recipe (measured on the shared 2-core development CPU; numbers in the closing note of issue 5)
- Data: the COVAR-Shapes generators (``covar_harness_tasks.shape_drawing``) with seeds disjoint from the
  benchmark's: a pool of 300 cut-outs per class (random colour, mild texture, thick dark outline; 15 % in a
  side/top view; rotated by up to +-0.3 rad, 15 % by any angle) and 60 backgrounds per family. Each training
  image is composed on the fly with the benchmark's own ``image_ops`` functions (``fit_object``,
  ``fit_background``, ``composite``): object bbox 45-75 % of the side, near the centre, random horizontal
  flip; 64 x 64 px. Large, outlined, roughly centred objects because learning the shapes (not the
  backgrounds) is the bottleneck.
- Model: ``open_clip.CLIP``, embed_dim 64; vision 64 px, patch 8 (8 x 8 tokens + CLS), width 64, 4 layers,
  4 heads; text context 12, vocab 49408 (the bundled tokenizer emits ids up to 49407), width 32, 2 layers,
  2 heads. Saved in fp16 (under 4 MB), loaded by open_clip's standard ``local-dir:`` loader.
- Prompt: the bare class name (template ``"{}"``, also the covar-shapes tasks' template). Ten prompts that
  share a long template start out nearly identical (cosine 0.87) and learning stalls; bare names start at 0.49.
- Loss: symmetric cross-entropy between the batch images and the ten class prompts, every same-class pair a
  positive: image -> prompt (10-way CE) and prompt -> images (soft targets over that class's images). Plain
  one-caption-per-image CLIP loss is ill-posed with ten classes in a batch.
- Optimiser: AdamW (0.9, 0.98, eps 1e-6, wd 0.05 on matrices only), text tower at 0.1 x the lr (at full
  speed it collapses all prompts onto the mean image within ~10 steps), linear warm-up over 10 % then cosine,
  peak lr 3e-4 (2e-3 collapsed; 5e-4 plateaued ~150 steps longer), batch 64, fp32, one torch thread (OpenMP
  threads spin badly on a shared CPU), torch seed 0. Clean: 4000 steps. Shortcut: 500 steps with class i on
  background family i with probability 0.9; it learns the backgrounds within ~150 steps.

Usage: ``python scripts/train_demo_models.py [--model clean|shortcut|both] [--steps N] [--out DIR]``;
the default ``--out`` is the package's ``covar_harness/resources/demo``. Progress goes to stdout (tee it to a log).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covar_harness_tasks import shape_drawing as draw
from covar_harness_tasks.image_ops import composite, fit_background, fit_object

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "harness" / "resources" / "demo"
TEMPLATE = "{}"  # the bare class name: prompts differ most at init (cosine 0.49 vs 0.87 for "a photo of a {}.")
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 4, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TRAIN_SEED = 7_000_000  # disjoint from covar_shapes.BENCH_SEED: the benchmark's objects are never trained on


@dataclass
class Pools:
    """Pre-rendered cut-outs (per class) and backgrounds (per family) that training images are composed from."""

    objects: list[list[tuple[np.ndarray, np.ndarray]]]  # [class][i] -> (rgb, mask) at source size
    backgrounds: list[list[np.ndarray]]  # [family][i] -> rgb


def render_pools(seed: int, per_class: int, per_family: int) -> Pools:
    objects = []
    for ci, cls in enumerate(draw.CLASSES):
        row = []
        for k in range(per_class):
            rng = np.random.default_rng([seed, ci, k])
            rot = float(rng.uniform(0, 2 * math.pi)) if rng.random() < 0.15 else float(rng.uniform(-0.3, 0.3))
            view = (1.0, 1.0)
            if rng.random() < 0.15:
                f = float(rng.uniform(0.5, 0.8))
                view = (f, 1.0) if rng.random() < 0.5 else (1.0, f)
            rgba = draw.render_object(cls, rng, rotation=rot, view=view)
            row.append((rgba[..., :3], rgba[..., 3] > 127))
        objects.append(row)
    backgrounds = [
        [draw.render_background(f, np.random.default_rng([seed, 500 + fi, k]), 96) for k in range(per_family)]
        for fi, f in enumerate(draw.FAMILIES)
    ]
    return Pools(objects, backgrounds)


def compose(pools: Pools, label: int, family: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One training image: a random object of ``label`` on a random background of ``family``."""
    from PIL import Image

    rgb, mask = pools.objects[label][int(rng.integers(len(pools.objects[label])))]
    bgs = pools.backgrounds[family]
    bg, _ = fit_background(Image.fromarray(bgs[int(rng.integers(len(bgs)))]), size, rng)
    o_rgb, o_mask = fit_object(rgb, mask, int(size * rng.uniform(0.45, 0.75)))
    h, w = o_mask.shape
    cx = size / 2 + rng.uniform(-0.25, 0.25) * max(0, size - w)
    cy = size / 2 + rng.uniform(-0.25, 0.25) * max(0, size - h)
    img, _ = composite(bg, o_rgb, o_mask, (cx, cy))
    return img[:, ::-1] if rng.random() < 0.5 else img


def sample_batch(pools: Pools, batch: int, shortcut_p: float | None, rng: np.random.Generator):
    """Labels uniform; family = label with prob ``shortcut_p`` (shortcut model), else uniform (clean)."""
    labels = rng.integers(0, len(draw.CLASSES), batch)
    fams = rng.integers(0, len(draw.FAMILIES), batch)
    if shortcut_p is not None:
        keep = rng.random(batch) < shortcut_p
        fams = np.where(keep, labels, fams)
    images = np.stack([compose(pools, int(y), int(f), rng) for y, f in zip(labels, fams)])
    return images, labels


def to_tensor(images: np.ndarray):
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def loss_fn(model, pixels, labels, tokens):
    """Symmetric CE in which every same-class (image, prompt) pair is a positive."""
    import torch.nn.functional as F

    img = F.normalize(model.encode_image(pixels), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    logits = scale * img @ txt.t()  # (B, C)
    i2t = F.cross_entropy(logits, labels)
    onehot = F.one_hot(labels, txt.shape[0]).t().float()  # (C, B)
    present = onehot.sum(1) > 0
    targets = onehot[present] / onehot[present].sum(1, keepdim=True)
    t2i = -(targets * F.log_softmax(logits.t()[present], dim=1)).sum(1).mean()
    acc = (logits.argmax(1) == labels).float().mean()
    return (i2t + t2i) / 2, acc


def make_optimizer(model, lr: float, text_lr_mult: float):
    """AdamW; the text tower learns ``text_lr_mult`` times slower.

    Why: with ten prompts that differ in one token, a text tower at full speed collapses all prompts onto the
    mean image embedding within ~10 steps (measured: prompt cosine 0.87 -> 0.995), after which the images
    get no signal and the loss sits at its uniform value forever.
    """
    import torch

    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        text = not name.startswith("visual.") and name != "logit_scale"
        plain = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        groups.setdefault((text, plain), []).append(p)
    return torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": 0.0 if plain else 0.05, "lr_mult": text_lr_mult if text else 1.0}
            for (text, plain), ps in groups.items()
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def lr_at(step: int, steps: int, peak: float, warmup: float = 0.1) -> float:
    w = max(1, int(steps * warmup))
    if step < w:
        return peak * (step + 1) / w
    return 0.5 * peak * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


@dataclass
class EvalSets:
    original: tuple  # (pixels, labels): own family, canonical size, centred
    bg_varied: tuple  # other family


def make_eval(pools: Pools, n: int, seed: int) -> EvalSets:
    """Held-out check in the benchmark's canonical pose (object 60 % of the side, centred)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for name in ("original", "bg_varied"):
        imgs, labels = [], []
        for _ in range(n):
            y = int(rng.integers(len(draw.CLASSES)))
            fam = y if name == "original" else int((y + rng.integers(1, len(draw.FAMILIES))) % len(draw.FAMILIES))
            rgb, mask = pools.objects[y][int(rng.integers(len(pools.objects[y])))]
            bgs = pools.backgrounds[fam]
            bg, _ = fit_background(Image.fromarray(bgs[int(rng.integers(len(bgs)))]), 64, rng)
            o_rgb, o_mask = fit_object(rgb, mask, int(64 * 0.6))
            imgs.append(composite(bg, o_rgb, o_mask, (32, 32))[0])
            labels.append(y)
        out[name] = (to_tensor(np.stack(imgs)), np.array(labels))
    return EvalSets(out["original"], out["bg_varied"])


def evaluate(model, tokens, sets: EvalSets) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    res = {}
    with torch.no_grad():
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        for name in ("original", "bg_varied"):
            x, y = getattr(sets, name)
            pred = (F.normalize(model.encode_image(x), dim=-1) @ txt.t()).argmax(1).numpy()
            res[name] = float((pred == y).mean())
    model.train()
    return res


def train(
    name: str,
    shortcut_p: float | None,
    steps: int,
    lr: float,
    batch: int,
    pools: Pools,
    sets: EvalSets,
    out: Path | None,
    seed: int = 0,
    log_every: int = 25,
    text_lr_mult: float = 0.1,
) -> dict:
    import open_clip
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1 if shortcut_p is not None else 0])
    model = open_clip.CLIP(**MODEL_CFG)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    tokens = tokenizer(
        [TEMPLATE.format(c) for c in draw.CLASSES], context_length=MODEL_CFG["text_cfg"]["context_length"]
    )
    opt = make_optimizer(model, lr, text_lr_mult)
    model.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr) * g["lr_mult"]
        images, labels = sample_batch(pools, batch, shortcut_p, rng)
        loss, acc = loss_fn(model, to_tensor(images), torch.from_numpy(labels), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            msg = (
                f"[{name}] step {step}/{steps} loss {loss.item():.3f} batch-acc {acc.item():.2f} "
                f"lr {lr_at(step, steps, lr):.2e} {time.time() - t0:.0f}s"
            )
            if step % (log_every * 4) == 0 or step == steps - 1:
                msg += f" heldout {evaluate(model, tokens, sets)}"
            print(msg, flush=True)
    result = {
        "name": name,
        "steps": steps,
        "lr": lr,
        "batch": batch,
        "shortcut_p": shortcut_p,
        "train_seconds": round(time.time() - t0, 1),
        "heldout": evaluate(model, tokens, sets),
    }
    print(json.dumps(result), flush=True)
    if out is not None:
        save(model, out / name, result)
    return result


def save(model, folder: Path, info: dict) -> None:
    """open_clip's ``local-dir:`` layout, fp16 weights; ``train_info.json`` records how it was made."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": {}}, indent=1))
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "train_info.json").write_text(json.dumps(info, indent=1))


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["clean", "shortcut", "both"], default="both")
    ap.add_argument("--steps", type=int, default=4000, help="steps for the clean model")
    ap.add_argument("--shortcut-steps", type=int, default=500)
    ap.add_argument("--shortcut-p", type=float, default=0.9)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pool", type=int, default=300, help="object cut-outs per class")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: spinning OpenMP threads crawl on a shared CPU)"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where <name>/ folders go ('-' to not save)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = None if str(args.out) == "-" else args.out
    t0 = time.time()
    pools = render_pools(TRAIN_SEED, args.pool, 60)
    sets = make_eval(render_pools(TRAIN_SEED + 1, 30, 10), 300, seed=1)
    print(f"pools rendered in {time.time() - t0:.0f}s", flush=True)
    if args.model in ("clean", "both"):
        train("shapes-clean", None, args.steps, args.lr, args.batch, pools, sets, out)
    if args.model in ("shortcut", "both"):
        train("shapes-shortcut", args.shortcut_p, args.shortcut_steps, args.lr, args.batch, pools, sets, out)
    print(f"total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
