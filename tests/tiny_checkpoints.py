"""Randomly initialised CLIP and BLIP-2 checkpoints, written like the real ones, for tests and benchmarks.

No hub is reachable here, so the tokenizers are made on the spot: a byte-level BPE trained on a
few sentences (CLIP) and a word-level WordPiece vocabulary (BLIP-2's BERT tokenizer). The
checkpoint directories load through ``from_pretrained`` exactly like downloaded ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SENTENCES = [
    "a photo of a cat sitting on a red mat",
    "a diagram of a neural network with three layers",
    "the quick brown fox jumps over the lazy dog",
    "long short term memory networks remember information",
    "a red square on a white background",
    "a blue circle next to a green triangle",
    "convolutional networks share weights across positions",
    "backpropagation computes derivatives with the chain rule",
]

TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8}


def clip_tokenizer(texts: list[str], vocab_size: int = 500, model_max_length: int = 77) -> Any:
    """A ``CLIPTokenizer`` whose byte-level BPE (CLIP's normaliser and pre-tokeniser) is trained on ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    reference = CLIPTokenizer()  # only for its normaliser and pre-tokeniser
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    bpe.normalizer = reference.backend_tokenizer.normalizer
    bpe.pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for char in pre_tokenizers.ByteLevel.alphabet():  # every byte can end a word
        vocab.setdefault(char + "</w>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def bert_tokenizer(texts: list[str], model_max_length: int = 512) -> Any:
    """A lower-casing ``BertTokenizer`` over the words of ``texts`` plus single characters."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for t in texts for w in t.lower().split()})
    chars = sorted({c for t in texts for c in t.lower() if not c.isspace()} | set("abcdefghijklmnopqrstuvwxyz0123456789.,!?"))
    for token in words + chars + ["##" + c for c in chars]:
        if token not in tokens:
            tokens.append(token)
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=model_max_length)


def save_random_clip(
    out_dir: Path,
    *,
    text: dict[str, int] | None = None,
    vision: dict[str, int] | None = None,
    projection_dim: int = 16,
    vocab_size: int | None = None,
    tokenizer_texts: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a random ``CLIPModel`` + ``CLIPProcessor`` checkpoint to ``out_dir`` (tiny by default)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as ImageProcessor

    text = {**TINY_TEXT, **(text or {})}
    vision = {**TINY_VISION, **(vision or {})}
    tokenizer = clip_tokenizer(tokenizer_texts or SENTENCES)
    config = CLIPConfig(
        text_config={
            **text,
            "vocab_size": max(vocab_size or 0, len(tokenizer)),
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=vision,
        projection_dim=projection_dim,
    )
    side = vision["image_size"]
    processor = CLIPProcessor(
        image_processor=ImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def save_random_blip2(out_dir: Path, *, num_query_tokens: int = 32, embed_dim: int = 16, seed: int = 0) -> Path:
    """Write a tiny random BLIP-2 retrieval checkpoint (the layout of ``Salesforce/blip2-itm-vit-g``) to ``out_dir``."""
    import torch
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    try:
        from transformers import BlipImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4
        from transformers import BlipImageProcessor as ImageProcessor

    tokenizer = bert_tokenizer(SENTENCES)
    # Blip2VisionConfig's default initializer_range is 1e-10: every image would embed alike.
    vision = {**TINY_VISION, "num_hidden_layers": 1, "initializer_range": 0.02}
    config = Blip2Config(
        vision_config=vision,
        qformer_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "encoder_hidden_size": vision["hidden_size"],
            "cross_attention_frequency": 1,
            "max_position_embeddings": 64,
            "use_qformer_text_input": True,  # as in blip2-itm-vit-g: the Q-Former also encodes text
            "initializer_range": 0.2,  # at 0.02 a 1-layer Q-Former maps every input to nearly the same vector
        },
        text_config={"model_type": "opt", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "ffn_dim": 64, "vocab_size": 100},
        num_query_tokens=num_query_tokens,
        image_text_hidden_size=embed_dim,
    )
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = Blip2ForImageTextRetrieval(config)
    # post_init zeroes the query tokens; real checkpoints have learned, distinct ones.
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 1.0)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    side = vision["image_size"]
    ImageProcessor(size={"height": side, "width": side}).save_pretrained(out_dir)
    return out_dir


def textured_images(count: int, size: tuple[int, int] = (48, 40), seed: int = 0) -> list[Any]:
    """``count`` distinct RGB noise-and-stripes images (flat colours look alike to a random ViT)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        pixels[:, :: 2 + i % 5, i % 3] = 255
        images.append(Image.fromarray(pixels, "RGB"))
    return images


def png_bytes(image: Any) -> bytes:
    """``image`` encoded as PNG."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
