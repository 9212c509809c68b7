"""Built-in plugin: open_clip models through ``openclip:`` specs.

``openclip:ARCH/TAG`` (pretrained tag, e.g. ``ViT-B-32-quickgelu/openai``), ``openclip:hf-hub:ORG/REPO``,
``openclip:local-dir:PATH`` (a folder with ``open_clip_config.json`` and weights), and ``openclip:ARCH``
(random weights: useful for smoke tests only, and said so). Preprocessing is open_clip's own for the tag.
"""

from __future__ import annotations

import logging
from typing import Any

from covar_harness.hookspecs import hookimpl

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights fetched; the message says which and how to work offline."""


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class OpenClipAdapter:
    """ModelAdapter over an ``open_clip`` CLIP / CustomTextCLIP model."""

    family = "openclip"

    def __init__(self, name: str, model, preprocess, tokenizer, device: str, precision: str):
        self.name = name
        self.model = model.eval()
        self.preprocess = preprocess  # torchvision Compose: picklable for DataLoader workers
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.dtype = torch_dtype(precision)

    def encode_images(self, pixels):
        import torch

        with torch.inference_mode():
            return self.model.encode_image(pixels.to(self.device, self.dtype)).float()

    def encode_texts(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "precision": self.precision}


def parse_spec(rest: str) -> tuple[str, str | None]:
    """``ARCH/TAG`` -> (ARCH, TAG); ``hf-hub:...`` and ``local-dir:...`` pass through with no tag."""
    if rest.startswith(("hf-hub:", "local-dir:")):
        return rest, None
    arch, _, tag = rest.partition("/")
    return arch, (tag or None)


def load_openclip(rest: str, *, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None):
    import open_clip

    model_name, tag = parse_spec(rest)
    if not rest.startswith(("hf-hub:", "local-dir:")) and model_name not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"open_clip has no architecture {model_name!r}{hint}")
    if tag is None and not rest.startswith(("hf-hub:", "local-dir:")):
        log.warning("openclip:%s has no pretrained tag: the weights are RANDOM (smoke tests only)", rest)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=tag, precision=precision, device=device, cache_dir=cache_dir,
            pretrained_text=False if tag is None else True,
        )
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    except Exception as exc:
        raise ModelLoadError(_explain_failure(rest, model_name, tag, exc)) from exc
    return OpenClipAdapter(f"openclip:{rest}", model, preprocess, tokenizer, device, precision)


def _explain_failure(rest: str, model_name: str, tag: str | None, exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if rest.startswith("local-dir:"):
        return f"openclip:{rest}: cannot load the local model folder ({first})"
    what = f"config/weights of {model_name}" + (f" (pretrained={tag})" if tag else "")
    return (
        f"openclip:{rest}: fetching the {what} failed ({first}). Offline or gated? Download once with network "
        "access (HF_HOME / --cache-dir decide where), or save the model with open_clip and use "
        "openclip:local-dir:PATH."
    )


@hookimpl
def register_model_schemes(register):
    register("openclip", load_openclip, description="open_clip: ARCH/TAG, hf-hub:ORG/REPO, local-dir:PATH")
