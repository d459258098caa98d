"""Text encoders of the Pyramid-Flow SD3 pipeline, built from HF `transformers` classes.

Reference: pyramid-flow-facts.md §5 (`SD3TextEncoderWithMask`):
* T5 v1.1 XXL encoder (`text_encoder_3/`): ids [B, 128] + attention mask -> `last_hidden_state`
  [B, 128, 4096], **not** zeroed at pads; the mask travels on to the DiT.
* CLIP-L (`text_encoder/`) and CLIP-G (`text_encoder_2/`), both `CLIPTextModelWithProjection`, ids
  [B, 77], no attention mask; pooled = `text_embeds` (projected end-token feature), concatenated
  768 + 1280 = 2048. CLIP hidden states are not used.
* The positive prompt gets ", hyper quality, Ultra HD, 8K" appended, the negative prompt does not
  (§4.5); the default negative prompt is in neoc.zoo.text_configs.

Everything works offline: models are built from config dicts, weights come from local safetensors
folders only (neoc.models.checkpoint refuses pickles).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from neoc.errors import InputError
from neoc.models.checkpoint import load_state_dict_strict, read_safetensors_folder
from neoc.models.tokenizers import (
    FixedLengthTokenizer,
    load_tokenizer_folder,
    tiny_clip_tokenizer,
    tiny_t5_tokenizer,
)
from neoc.zoo import text_configs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# --- building and loading HF models ------------------------------------------------------------------


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device while buffers stay real.

    Lets a multi-billion-parameter model be built instantly and then take its weights by
    assignment, while computed buffers (CLIP's `position_ids`, not stored in checkpoints) keep
    their values. Same idea as `accelerate.init_empty_weights(include_buffers=False)`.
    """
    register_parameter = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter


def _tied_parameter_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one Parameter (e.g. T5 `shared.weight` = `encoder.embed_tokens.weight`)."""
    names_by_param: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_param.setdefault(id(param), []).append(name)
    return [names for names in names_by_param.values() if len(names) > 1]


def _set_parameter(model: nn.Module, name: str, param: nn.Parameter) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    owner._parameters[attr] = param


def _read_config(folder: Path, expected_model_type: str) -> dict:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f"{config_path}: missing (a text-encoder folder needs config.json + safetensors)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise InputError(f"{config_path}: not valid JSON ({error})") from None
    model_type = config.get("model_type")
    if model_type != expected_model_type:
        raise InputError(f"{config_path}: key 'model_type' is {model_type!r}, expected {expected_model_type!r}")
    return config


def build_hf_model(model_class, config_class, config: dict, device: str | torch.device | None = None):
    """An HF model from a config dict, randomly initialised (or on the meta device for analysis)."""
    hf_config = config_class(**{k: v for k, v in config.items() if k != "model_type"})
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return model_class(hf_config).eval()
    model = model_class(hf_config).eval()
    return model.to(device) if device is not None else model


def load_hf_model_folder(model_class, config_class, folder: str | os.PathLike, dtype: torch.dtype | None = None):
    """An HF model from a local folder: config.json + safetensors (single file or sharded index).

    Strict: every parameter must come from the file, with its shape; unexpected tensors are errors.
    A tie group (T5's shared/embed_tokens) needs one of its names in the file. Pickled weights are
    refused with an InputError. `dtype` casts floating tensors (None keeps the stored dtype).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: text-encoder folder not found")
    config = _read_config(folder, config_class.model_type)
    hf_config = config_class.from_dict(config)
    with _parameters_on_meta():
        model = model_class(hf_config)
    state_dict = read_safetensors_folder(folder)

    tied_groups = _tied_parameter_groups(model)
    for group in tied_groups:  # the file stores one name per tie group; alias the others
        stored = [name for name in group if name in state_dict]
        for name in group:
            if stored and name not in state_dict:
                state_dict[name] = state_dict[stored[0]]
    non_persistent = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    state_dict = {key: value for key, value in state_dict.items() if key not in non_persistent}
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}

    load_state_dict_strict(model, state_dict, source_name=str(folder))
    for group in tied_groups:  # assignment replaced each alias separately: tie them again
        canonical = model.get_parameter(group[0])
        for name in group[1:]:
            _set_parameter(model, name, canonical)
    return model.eval()


def save_hf_model_folder(model, folder: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors (one name per tie group), loadable by load_hf_model_folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    aliases = {name for group in _tied_parameter_groups(model) for name in group[1:]}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}
    save_file(tensors, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(model.config.to_json_string(use_diff=False))
    return folder


def count_parameters(module: nn.Module) -> int:
    """Unique parameters (tied weights counted once); works on the meta device."""
    return sum(p.numel() for p in module.parameters())


# --- T5 ----------------------------------------------------------------------------------------------


class T5TextEncoder(nn.Module):
    """T5 encoder: (input_ids [B, L], attention_mask [B, L]) -> last_hidden_state [B, L, d_model].

    The teacher context encoder (T5 v1.1 XXL at real scale, d_model 4096) and, with a smaller
    config, the DT5-style student of the replace-text-encoder pass. Pad positions are not zeroed,
    like the reference; the DiT masks them.
    """

    def __init__(self, t5):
        super().__init__()
        self.t5 = t5  # transformers.T5EncoderModel

    @classmethod
    def from_config(cls, config: dict, device: str | torch.device | None = None) -> "T5TextEncoder":
        from transformers import T5Config, T5EncoderModel

        return cls(build_hf_model(T5EncoderModel, T5Config, config, device))

    @classmethod
    def from_pretrained_folder(cls, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> "T5TextEncoder":
        """Load e.g. `text_encoder_3/` (config.json + sharded safetensors)."""
        from transformers import T5Config, T5EncoderModel

        return cls(load_hf_model_folder(T5EncoderModel, T5Config, folder, dtype))

    def save_pretrained_folder(self, folder: str | os.PathLike) -> Path:
        return save_hf_model_folder(self.t5, folder)

    @property
    def hidden_size(self) -> int:
        return self.t5.config.d_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.t5(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return output.last_hidden_state  # [B, L, d_model]


# --- CLIP-L + CLIP-G -----------------------------------------------------------------------------------


class PooledClipEncoders(nn.Module):
    """CLIP-L and CLIP-G text towers with projection -> pooled [B, proj_l + proj_g] (2048 at real scale).

    Pooled = `text_embeds` of `CLIPTextModelWithProjection` (the projected final-layer feature at the
    end token), CLIP-L first; no attention mask, as in the reference.
    """

    def __init__(self, clip_l, clip_g):
        super().__init__()
        self.clip_l = clip_l  # transformers.CLIPTextModelWithProjection
        self.clip_g = clip_g  # transformers.CLIPTextModelWithProjection

    @classmethod
    def from_config(
        cls, clip_l_config: dict, clip_g_config: dict, device: str | torch.device | None = None
    ) -> "PooledClipEncoders":
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        return cls(
            build_hf_model(CLIPTextModelWithProjection, CLIPTextConfig, clip_l_config, device),
            build_hf_model(CLIPTextModelWithProjection, CLIPTextConfig, clip_g_config, device),
        )

    @classmethod
    def from_pretrained_folder(
        cls, clip_l_folder: str | os.PathLike, clip_g_folder: str | os.PathLike, dtype: torch.dtype | None = None
    ) -> "PooledClipEncoders":
        """Load `text_encoder/` (CLIP-L) and `text_encoder_2/` (CLIP-G)."""
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        return cls(
            load_hf_model_folder(CLIPTextModelWithProjection, CLIPTextConfig, clip_l_folder, dtype),
            load_hf_model_folder(CLIPTextModelWithProjection, CLIPTextConfig, clip_g_folder, dtype),
        )

    def save_pretrained_folder(self, clip_l_folder: str | os.PathLike, clip_g_folder: str | os.PathLike) -> None:
        save_hf_model_folder(self.clip_l, clip_l_folder)
        save_hf_model_folder(self.clip_g, clip_g_folder)

    @property
    def pooled_dim(self) -> int:
        return self.clip_l.config.projection_dim + self.clip_g.config.projection_dim

    def forward(self, clip_l_ids: torch.Tensor, clip_g_ids: torch.Tensor) -> torch.Tensor:
        pooled_l = self.clip_l(input_ids=clip_l_ids, return_dict=True).text_embeds  # [B, proj_l]
        pooled_g = self.clip_g(input_ids=clip_g_ids, return_dict=True).text_embeds  # [B, proj_g]
        return torch.cat([pooled_l, pooled_g], dim=-1)  # [B, proj_l + proj_g]


# --- prompts -> token tensors --------------------------------------------------------------------------


class PromptEncoderBundle:
    """Owns the three tokenizers and turns prompt strings into the token tensors the pipeline needs.

    `encode(prompts)` -> {"t5_ids" [B, L_t5], "t5_mask" [B, L_t5], "clip_l_ids" [B, L_clip],
    "clip_g_ids" [B, L_clip]} (all long). The prompt suffix is appended to positive prompts only;
    `negative_prompt` is the unconditional branch's text (pyramid-flow-facts.md §4.5).
    """

    def __init__(
        self,
        t5_tokenizer: FixedLengthTokenizer,
        clip_l_tokenizer: FixedLengthTokenizer,
        clip_g_tokenizer: FixedLengthTokenizer,
        prompt_suffix: str = "",
        negative_prompt: str = "",
    ):
        self.t5_tokenizer = t5_tokenizer
        self.clip_l_tokenizer = clip_l_tokenizer
        self.clip_g_tokenizer = clip_g_tokenizer
        self.prompt_suffix = prompt_suffix
        self.negative_prompt = negative_prompt

    @classmethod
    def tiny(cls) -> "PromptEncoderBundle":
        """builtin:pyramid-tiny: shipped tokenizers, T5 32 / CLIP 32 tokens, empty suffix and negative."""
        clip_tokenizer = tiny_clip_tokenizer(text_configs.TINY_CLIP_MAX_LENGTH)
        return cls(
            t5_tokenizer=tiny_t5_tokenizer(text_configs.TINY_T5_MAX_LENGTH),
            clip_l_tokenizer=clip_tokenizer,
            clip_g_tokenizer=clip_tokenizer,
            prompt_suffix=text_configs.TINY_PROMPT_SUFFIX,
            negative_prompt=text_configs.TINY_NEGATIVE_PROMPT,
        )

    @classmethod
    def from_pretrained_folder(
        cls,
        root: str | os.PathLike,
        t5_max_length: int = text_configs.SD3_T5_MAX_LENGTH,
        clip_max_length: int = text_configs.SD3_CLIP_MAX_LENGTH,
        prompt_suffix: str = text_configs.SD3_PROMPT_SUFFIX,
        negative_prompt: str = text_configs.SD3_NEGATIVE_PROMPT,
    ) -> "PromptEncoderBundle":
        """A released SD3-layout folder: `tokenizer/` (CLIP-L), `tokenizer_2/` (CLIP-G), `tokenizer_3/` (T5).

        Defaults are the reference's: T5 128 tokens, CLIP 77, SD3 suffix and negative prompt.
        """
        root = Path(root)
        return cls(
            t5_tokenizer=FixedLengthTokenizer(load_tokenizer_folder(root / "tokenizer_3"), t5_max_length),
            clip_l_tokenizer=FixedLengthTokenizer(load_tokenizer_folder(root / "tokenizer"), clip_max_length),
            clip_g_tokenizer=FixedLengthTokenizer(load_tokenizer_folder(root / "tokenizer_2"), clip_max_length),
            prompt_suffix=prompt_suffix,
            negative_prompt=negative_prompt,
        )

    # -- run-folder protocol (neoc.ir.components.register_prompt_encoder kind "bundle") ------------------

    def describe(self) -> dict:
        """JSON description: lengths, prompt conventions and a fingerprint of each vocabulary."""
        return {
            "kind": "bundle",
            "t5_max_length": self.t5_tokenizer.max_length,
            "clip_max_length": self.clip_l_tokenizer.max_length,
            "prompt_suffix": self.prompt_suffix,
            "negative_prompt": self.negative_prompt,
            "vocab_sha256": {
                "tokenizer": _vocab_fingerprint(self.clip_l_tokenizer),
                "tokenizer_2": _vocab_fingerprint(self.clip_g_tokenizer),
                "tokenizer_3": _vocab_fingerprint(self.t5_tokenizer),
            },
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `tokenizer/`, `tokenizer_2/`, `tokenizer_3/` under folder (the released layout)."""
        folder = Path(folder)
        for name, tokenizer in (
            ("tokenizer", self.clip_l_tokenizer),
            ("tokenizer_2", self.clip_g_tokenizer),
            ("tokenizer_3", self.t5_tokenizer),
        ):
            tokenizer.hf_tokenizer.save_pretrained(str(folder / name))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, description: dict) -> "PromptEncoderBundle":
        """Inverse of save() + describe(); refuses tokenizers whose vocabulary changed."""
        bundle = cls.from_pretrained_folder(
            folder,
            t5_max_length=description["t5_max_length"],
            clip_max_length=description["clip_max_length"],
            prompt_suffix=description.get("prompt_suffix", ""),
            negative_prompt=description.get("negative_prompt", ""),
        )
        expected = description.get("vocab_sha256", {})
        for name, fingerprint in bundle.describe()["vocab_sha256"].items():
            if name in expected and expected[name] != fingerprint:
                raise InputError(f"{Path(folder) / name}: vocabulary differs from the one recorded in the manifest")
        return bundle

    # -- encoding ---------------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str] | str, add_suffix: bool = True) -> dict[str, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [prompt + self.prompt_suffix for prompt in prompts] if add_suffix else list(prompts)
        t5_ids, t5_mask = self.t5_tokenizer(texts)  # [B, L_t5] each
        clip_l_ids, _ = self.clip_l_tokenizer(texts)  # [B, L_clip]; CLIP runs without a mask
        clip_g_ids, _ = self.clip_g_tokenizer(texts)  # [B, L_clip]
        return {"t5_ids": t5_ids, "t5_mask": t5_mask, "clip_l_ids": clip_l_ids, "clip_g_ids": clip_g_ids}

    def encode_negative(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The negative prompt, repeated batch_size times, without the suffix."""
        return self.encode([self.negative_prompt] * batch_size, add_suffix=False)

    def encode_for_guidance(
        self, prompts: Sequence[str] | str, negative_prompt: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Classifier-free-guidance batch [negative (B rows); positive (B rows)], the reference's order.

        Positive prompts get the suffix; the negative prompt (default: `self.negative_prompt`) does not.
        """
        positive = self.encode(prompts, add_suffix=True)
        negative_text = self.negative_prompt if negative_prompt is None else negative_prompt
        negative = self.encode([negative_text] * positive["t5_ids"].shape[0], add_suffix=False)
        return {key: torch.cat([negative[key], positive[key]], dim=0) for key in positive}  # [2B, L]

    def encode_pair(self, negative: str, positive: str) -> dict[str, torch.Tensor]:
        """One CFG pair, rows [negative, positive] (the Pipeline's prompt-encoder call)."""
        return self.encode_for_guidance([positive], negative_prompt=negative)


def _vocab_fingerprint(tokenizer: FixedLengthTokenizer) -> str:
    """sha256 of the sorted (token, id) list: names a vocabulary independent of file formatting."""
    vocab = sorted(tokenizer.hf_tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()
