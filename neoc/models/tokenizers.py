"""Tokenizers for the text encoders, one code path at both scales.

Real Pyramid-Flow SD3 checkpoints (pyramid-flow-facts.md §5-6) carry `tokenizer/` and `tokenizer_2/`
(CLIP BPE, used for CLIP-L and CLIP-G) and `tokenizer_3/` (T5 v1.1 SentencePiece Unigram). They are
loaded from the local folder with transformers' fast tokenizers, never from the hub.

The tiny model ships its own small tokenizers (trained by neoc.zoo.build_tokenizer, stored as
tokenizer.json files in neoc/zoo/assets/) and wraps them in `PreTrainedTokenizerFast`, so both
scales expose the same HF call API.

`FixedLengthTokenizer` applies the reference's call convention: padding to `max_length`,
truncation, special tokens added (T5 appends `</s>`; CLIP wraps in start/end tokens).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from neoc.errors import InputError

ASSETS_DIR = Path(__file__).resolve().parent.parent / "zoo" / "assets"
TINY_T5_TOKENIZER_FILE = ASSETS_DIR / "tiny_t5_unigram.json"
TINY_CLIP_TOKENIZER_FILE = ASSETS_DIR / "tiny_clip_bpe.json"

# Special tokens of the tiny tokenizers (same names and, for T5, same ids as the real ones).
TINY_T5_SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
TINY_CLIP_SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",  # CLIP-L's tokenizer pads with its end token too
    "unk_token": "<|endoftext|>",
}


def load_tokenizer_file(path: str | os.PathLike, special_tokens: dict[str, str], model_max_length: int):
    """A `PreTrainedTokenizerFast` around one tokenizer.json file (offline)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: tokenizer file not found")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), model_max_length=model_max_length, **special_tokens
    )


def load_tokenizer_folder(folder: str | os.PathLike):
    """The fast tokenizer saved in a checkpoint's `tokenizer*/` folder, read locally, never downloaded."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as error:
        raise InputError(f"{folder}: cannot load tokenizer ({error})") from None


class FixedLengthTokenizer:
    """Prompts -> (input_ids [B, L] long, attention_mask [B, L] long), always L = max_length.

    Wraps an HF fast tokenizer with the reference call: `padding="max_length", truncation=True,
    add_special_tokens=True` (pyramid-flow-facts.md §5). Truncation keeps the end token.
    """

    def __init__(self, hf_tokenizer, max_length: int):
        self.hf_tokenizer = hf_tokenizer
        self.max_length = int(max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.hf_tokenizer)

    @property
    def pad_token_id(self) -> int:
        return self.hf_tokenizer.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.hf_tokenizer.eos_token_id

    @property
    def unk_token_id(self) -> int | None:
        return self.hf_tokenizer.unk_token_id

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        batch = self.hf_tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].long()  # [B, L]
        attention_mask = batch["attention_mask"].long()  # [B, L], 1 on real tokens incl. specials
        return input_ids, attention_mask

    def decode(self, input_ids: torch.Tensor) -> str:
        """Text of one [L] id row, special tokens dropped (for logs and debugging)."""
        return self.hf_tokenizer.decode(input_ids.tolist(), skip_special_tokens=True)

    def tokens(self, prompt: str) -> list[str]:
        """Token strings of one prompt, special tokens included, no padding."""
        return self.hf_tokenizer.convert_ids_to_tokens(self.hf_tokenizer(prompt)["input_ids"])


def tiny_t5_tokenizer(max_length: int) -> FixedLengthTokenizer:
    """The tiny model's T5-style Unigram tokenizer (`<pad>`=0, `</s>`=1, `<unk>`=2)."""
    return FixedLengthTokenizer(
        load_tokenizer_file(TINY_T5_TOKENIZER_FILE, TINY_T5_SPECIAL_TOKENS, max_length), max_length
    )


def tiny_clip_tokenizer(max_length: int) -> FixedLengthTokenizer:
    """The tiny model's CLIP-style BPE tokenizer (`<|startoftext|>`=0, `<|endoftext|>`=1)."""
    return FixedLengthTokenizer(
        load_tokenizer_file(TINY_CLIP_TOKENIZER_FILE, TINY_CLIP_SPECIAL_TOKENS, max_length), max_length
    )
