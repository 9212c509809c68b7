"""Tiny Grounding DINO and SAM checkpoints saved offline, loadable by path through ``from_pretrained``.

Random weights, built in about a second. Grounding DINO: a 4-stage Swin backbone of width 16 (Swin builds from
its config alone, no timm or hub download) on 2 px patches, so that the extra feature level of a single 64 px
image is still 2x2 (GroupNorm needs more than one value per group); a 1-layer BERT text tower over a word-level
tokenizer trained in memory with ``tokenizers``; d_model 32 (GroupNorm needs a multiple of 32) and 2 decoder
layers (the tied box heads need more than one). SAM: a 1-layer ViT on 64 px inputs in 8 px patches.
Processors are constructed directly and saved beside the weights, so the segmenter loads these folders exactly
as it loads hub ids (``AutoProcessor`` / ``AutoModel...from_pretrained``).
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["cat", "dog", "fish", "bird", "red", "square", "thing", "a", "photo", "of", "the"]


def bert_tokenizer(extra: tuple[str, ...] = ()):
    """A lowercasing word-level BERT-style tokenizer ([CLS] text [SEP]) over a handful of class words (plus
    ``extra`` tokens, e.g. punctuation)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([" ".join([*WORDS, *extra]) + " ."], trainers.WordLevelTrainer(special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=32,
    )


def make_grounding_dino_dir(path: Path, seed: int = 0) -> Path:
    """A random tiny ``GroundingDinoForObjectDetection`` plus its processor, saved with ``save_pretrained``."""
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(seed)
    tokenizer = bert_tokenizer()
    swin = SwinConfig(
        image_size=64,
        patch_size=2,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage2", "stage3", "stage4"],
    )
    bert = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    cfg = GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        max_text_len=32,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    model = GroundingDinoForObjectDetection(cfg).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def make_sam_dir(path: Path, seed: int = 0, mask_sign: int = 1) -> Path:
    """A random tiny ``SamModel`` (64 px inputs) plus its processor, saved with ``save_pretrained``.

    A random SAM often returns an empty mask for the tiny boxes a random detector proposes, which the segmenter
    rightly reports as "not found". To make the wiring testable, the mask decoder's last layers are overridden:
    upscaled embeddings of about 10 everywhere and hypernetwork outputs of ``mask_sign`` (+1 or -1) give mask
    logits of one sign: a full mask (+1) or an empty one (-1), whatever the image and box.
    """
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(seed)
    cfg = SamConfig(
        vision_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            output_channels=16,
            mlp_dim=32,
            global_attn_indexes=[0],
            window_size=0,
            num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16
        ),
    )
    model = SamModel(cfg).eval()
    decoder = model.mask_decoder
    with torch.no_grad():
        decoder.upscale_conv2.weight.zero_()
        decoder.upscale_conv2.bias.fill_(10.0)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.zero_()
            mlp.proj_out.bias.fill_(float(mask_sign))
    image_processor = SamImageProcessor(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    SamProcessor(image_processor=image_processor).save_pretrained(path)
    return path


class PlantedDetector:
    """Stands in for the loaded Grounding DINO: the same outputs for every image, boxes planted by hand.

    ``boxes`` are normalised (cx, cy, w, h) with a logit each; every token of every box gets that logit, so a
    box passes both thresholds when its sigmoid exceeds them. The other queries of ``n_queries`` score -10.
    """

    def __init__(self, boxes: list[tuple[tuple[float, float, float, float], float]], n_queries: int = 5):
        self.boxes, self.n_queries = boxes, n_queries

    def __call__(self, input_ids=None, **_):
        from types import SimpleNamespace

        import torch

        batch, length = input_ids.shape
        logits = torch.full((batch, self.n_queries, length), -10.0)
        pred_boxes = torch.full((batch, self.n_queries, 4), 0.5)
        for q, (box, logit) in enumerate(self.boxes):
            logits[:, q, :] = logit
            pred_boxes[:, q] = torch.tensor(box)
        return SimpleNamespace(logits=logits, pred_boxes=pred_boxes)


class BoxSam:
    """Stands in for the loaded SAM: each box prompt's mask is exactly its box (in the 64 px input frame, on the
    16 px low-resolution mask grid the tiny SAM processor post-processes)."""

    def __call__(self, pixel_values=None, input_boxes=None, multimask_output=False, **_):
        from types import SimpleNamespace

        import torch

        batch, n_boxes, _ = input_boxes.shape
        masks = torch.full((batch, n_boxes, 1, 16, 16), -10.0)
        for b in range(batch):
            for k in range(n_boxes):
                x0, y0, x1, y1 = (float(v) / 4 for v in input_boxes[b, k])
                masks[b, k, 0, int(y0) : int(round(y1)), int(x0) : int(round(x1))] = 10.0
        return SimpleNamespace(pred_masks=masks)
