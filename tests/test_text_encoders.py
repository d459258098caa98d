"""Text side of the pipeline: configs, tokenizers, encoders (pyramid-flow-facts.md §5; component-facts.md §3).

Real scale is checked on the meta device only; behaviour is checked on the tiny configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neoc.errors import InputError
from neoc.models.text_encoders import (
    PooledClipEncoders,
    PromptEncoderBundle,
    T5TextEncoder,
    count_parameters,
)
from neoc.models.tokenizers import TINY_CLIP_TOKENIZER_FILE, TINY_T5_TOKENIZER_FILE
from neoc.zoo import build_tokenizer
from neoc.zoo import text_configs as tc

PROMPTS = [
    "a red circle moves left on a gradient background",
    "A purple star rotates in place against a striped backdrop.",
    "",
]


def clip_text_params(cfg: dict) -> int:
    """CLIP text tower with projection, counted by hand from the architecture."""
    h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    embeddings = cfg["vocab_size"] * h + cfg["max_position_embeddings"] * h
    layer = 4 * (h * h + h) + 2 * (2 * h) + (h * i + i) + (i * h + h)  # q,k,v,o + 2 LayerNorms + MLP
    return embeddings + n * layer + 2 * h + h * cfg["projection_dim"]  # final LayerNorm + projection


def t5_encoder_params(cfg: dict) -> int:
    """T5 v1.1 encoder (gated-gelu, RMSNorm weight only, relative bias in layer 0), counted by hand."""
    d, ff, inner = cfg["d_model"], cfg["d_ff"], cfg["num_heads"] * cfg["d_kv"]
    layer = 4 * d * inner + 2 * d + 3 * d * ff  # q,k,v,o + 2 norms + wi_0, wi_1, wo
    relative_bias = cfg["relative_attention_num_buckets"] * cfg["num_heads"]
    return cfg["vocab_size"] * d + cfg["num_layers"] * layer + relative_bias + d


@pytest.fixture(scope="module")
def bundle() -> PromptEncoderBundle:
    return PromptEncoderBundle.tiny()


@pytest.fixture(scope="module")
def tiny_encoders():
    torch.manual_seed(0)
    return T5TextEncoder.from_config(tc.TINY_T5_CONFIG), PooledClipEncoders.from_config(
        tc.TINY_CLIP_L_CONFIG, tc.TINY_CLIP_G_CONFIG
    )


# --- real scale, meta device -----------------------------------------------------------------------------


def test_t5_xxl_encoder_has_4_762_310_656_params_on_meta():
    t5 = T5TextEncoder.from_config(tc.SD3_T5_CONFIG, device="meta")
    assert t5.hidden_size == 4096
    assert count_parameters(t5) == 4_762_310_656 == t5_encoder_params(tc.SD3_T5_CONFIG) == tc.SD3_T5_PARAMS


def test_dt5_base_encoder_params_on_meta():
    dt5 = T5TextEncoder.from_config(tc.DT5_BASE_CONFIG, device="meta")
    assert count_parameters(dt5) == t5_encoder_params(tc.DT5_BASE_CONFIG) == tc.DT5_BASE_PARAMS
    assert round(tc.DT5_BASE_PARAMS / 1e6, 2) == 109.63


def test_real_text_side_params_on_meta():
    clips = PooledClipEncoders.from_config(tc.SD3_CLIP_L_CONFIG, tc.SD3_CLIP_G_CONFIG, device="meta")
    clip_l, clip_g = count_parameters(clips.clip_l), count_parameters(clips.clip_g)
    assert clip_l == clip_text_params(tc.SD3_CLIP_L_CONFIG) == tc.SD3_CLIP_L_PARAMS
    assert clip_g == clip_text_params(tc.SD3_CLIP_G_CONFIG) == tc.SD3_CLIP_G_PARAMS
    # fp16 file sizes: text_encoder 247 MB, text_encoder_2 1.39 GB (facts §5)
    assert abs(2 * clip_l - 247e6) < 1.5e6 and abs(2 * clip_g - 1.39e9) < 0.01e9
    assert clips.pooled_dim == 768 + 1280 == 2048
    total = tc.SD3_T5_PARAMS + clip_l + clip_g
    assert total == 5_580_620_800  # T5-XXL + CLIP-L + CLIP-G


# --- tiny tokenizers ---------------------------------------------------------------------------------


def test_tiny_configs_match_shipped_tokenizers(bundle):
    assert bundle.t5_tokenizer.vocab_size == tc.TINY_T5_VOCAB_SIZE == tc.TINY_T5_CONFIG["vocab_size"]
    assert bundle.clip_l_tokenizer.vocab_size == tc.TINY_CLIP_VOCAB_SIZE == tc.TINY_CLIP_L_CONFIG["vocab_size"]
    t5 = bundle.t5_tokenizer
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)  # T5 v1.1 ids
    clip = bundle.clip_l_tokenizer
    assert clip.eos_token_id == tc.TINY_CLIP_L_CONFIG["eos_token_id"] == tc.TINY_CLIP_G_CONFIG["eos_token_id"]
    assert clip.hf_tokenizer.bos_token_id == tc.TINY_CLIP_L_CONFIG["bos_token_id"]


def test_t5_tokenizer_appends_eos_and_pads_to_max_length(bundle):
    ids, mask = bundle.t5_tokenizer(["a red circle moves left"])
    assert ids.shape == mask.shape == (1, tc.TINY_T5_MAX_LENGTH) and ids.dtype == mask.dtype == torch.long
    assert bundle.t5_tokenizer.tokens("a red circle moves left") == [
        "▁a", "▁red", "▁circle", "▁moves", "▁left", "</s>"
    ]
    assert ids[0, 5].item() == 1 and mask[0].tolist() == [1] * 6 + [0] * 26
    assert ids[0, 6:].eq(0).all()
    empty_ids, empty_mask = bundle.t5_tokenizer([""])
    assert empty_ids[0, 0].item() == 1 and empty_mask[0].sum().item() == 1  # just </s>


def test_clip_tokenizer_wraps_in_start_and_end_tokens(bundle):
    ids, _ = bundle.clip_l_tokenizer(["A Red Circle"])  # CLIP lower-cases
    assert bundle.clip_l_tokenizer.tokens("A Red Circle") == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]
    assert ids.shape == (1, tc.TINY_CLIP_MAX_LENGTH)
    assert ids[0, 0].item() == 0 and ids[0, 4:].eq(1).all()  # start, 3 words, end, then end-token padding


def test_truncation_keeps_the_end_token(bundle):
    long_prompt = " ".join(["red circle"] * 40)
    t5_ids, t5_mask = bundle.t5_tokenizer([long_prompt])
    assert t5_ids.shape[1] == 32 and t5_ids[0, -1].item() == 1 and t5_mask.all()
    clip_ids, _ = bundle.clip_l_tokenizer([long_prompt])
    assert clip_ids.shape[1] == 32 and clip_ids[0, 0].item() == 0 and clip_ids[0, -1].item() == 1
    assert clip_ids[0, 1:-1].ne(1).all()


def test_ids_are_deterministic_across_loads(bundle):
    again = PromptEncoderBundle.tiny()
    first, second = bundle.encode(PROMPTS), again.encode(PROMPTS)
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_toy_vocabulary_tokenises_without_unk(bundle):
    words = build_tokenizer.TOY_SHAPES + build_tokenizer.TOY_COLOURS + build_tokenizer.TOY_MOTIONS
    words += build_tokenizer.TOY_BACKGROUNDS + ["background", "moves", "grows", "shrinks", "rotates"]
    ids, mask = bundle.t5_tokenizer([" ".join(words)])
    assert not ids[mask.bool()].eq(bundle.t5_tokenizer.unk_token_id).any()
    for word in words:  # pieces spell the word (sub-word splits are fine, unknowns are not)
        assert "".join(bundle.t5_tokenizer.tokens(word)[:-1]) == f"▁{word}"
        assert "".join(bundle.clip_l_tokenizer.tokens(word)[1:-1]) == f"{word}</w>"


@pytest.mark.slow
def test_shipped_tokenizers_equal_a_fresh_rebuild(tmp_path):
    if not build_tokenizer.DEFAULT_PROMPTS_DIR.is_dir():
        pytest.skip("prompt corpus not present on this machine")
    build_tokenizer.build(build_tokenizer.DEFAULT_PROMPTS_DIR, tmp_path)
    for shipped in (TINY_T5_TOKENIZER_FILE, TINY_CLIP_TOKENIZER_FILE):
        assert (tmp_path / shipped.name).read_bytes() == shipped.read_bytes(), f"{shipped} is stale"


# --- prompts: suffix and negative prompt ----------------------------------------------------------------


def test_suffix_goes_to_positive_prompts_only(bundle):
    suffixed = PromptEncoderBundle(
        bundle.t5_tokenizer, bundle.clip_l_tokenizer, bundle.clip_g_tokenizer,
        prompt_suffix=", red", negative_prompt="blurry square",
    )
    positive = suffixed.encode(["a blue star"])
    manual = suffixed.encode(["a blue star, red"], add_suffix=False)
    plain = suffixed.encode(["a blue star"], add_suffix=False)
    assert all(torch.equal(positive[key], manual[key]) for key in positive)
    assert not torch.equal(positive["t5_ids"], plain["t5_ids"])
    negative = suffixed.encode_negative(2)
    assert torch.equal(negative["t5_ids"], suffixed.encode(["blurry square"] * 2, add_suffix=False)["t5_ids"])
    guided = suffixed.encode_for_guidance(["a blue star"])  # [negative; positive]
    assert torch.equal(guided["t5_ids"][0], negative["t5_ids"][0]) and torch.equal(guided["t5_ids"][1], positive["t5_ids"][0])
    assert guided["clip_g_ids"].shape == (2, tc.TINY_CLIP_MAX_LENGTH)
    pair = suffixed.encode_pair("blurry square", "a blue star")
    assert all(torch.equal(pair[key], guided[key]) for key in pair)


def test_prompt_conventions():
    assert tc.SD3_PROMPT_SUFFIX == ", hyper quality, Ultra HD, 8K"
    assert tc.SD3_NEGATIVE_PROMPT.startswith("cartoon style, worst quality") and tc.SD3_NEGATIVE_PROMPT.endswith("horror")
    tiny = PromptEncoderBundle.tiny()
    assert tiny.prompt_suffix == "" and tiny.negative_prompt == ""


# --- tiny encoders -----------------------------------------------------------------------------------


def test_tiny_encoders_output_shapes(bundle, tiny_encoders):
    t5, clips = tiny_encoders
    tokens = bundle.encode(PROMPTS)
    with torch.no_grad():
        context = t5(tokens["t5_ids"], tokens["t5_mask"])
        pooled = clips(tokens["clip_l_ids"], tokens["clip_g_ids"])
        student = T5TextEncoder.from_config(tc.TINY_DT5_CONFIG)
        student_context = student(tokens["t5_ids"], tokens["t5_mask"])
    assert context.shape == (3, 32, 192) and pooled.shape == (3, 128) and student_context.shape == (3, 32, 96)
    assert count_parameters(student) < count_parameters(t5) / 3


def test_t5_mask_is_applied_and_pads_are_not_zeroed(bundle, tiny_encoders):
    t5, _ = tiny_encoders
    ids, mask = bundle.t5_tokenizer(["a green cross shrinks"])
    other_pads = torch.where(mask.bool(), ids, torch.full_like(ids, 7))
    with torch.no_grad():
        out, out_other = t5(ids, mask), t5(other_pads, mask)
    real = mask[0].bool()
    assert torch.allclose(out[0, real], out_other[0, real], atol=1e-6)  # pads are masked keys
    assert out[0, ~real].abs().sum() > 0  # but their own outputs are kept, as in the reference


def test_pooled_is_projected_feature_at_the_end_token(bundle, tiny_encoders):
    _, clips = tiny_encoders
    ids, _ = bundle.clip_l_tokenizer(["a yellow diamond moves up", "a heart"])
    end_positions = [row.tolist().index(bundle.clip_l_tokenizer.eos_token_id) for row in ids]
    assert end_positions == [6, 3]
    with torch.no_grad():
        pooled = clips(ids, ids)
        hidden = clips.clip_l(input_ids=ids).last_hidden_state  # after the final LayerNorm
        expected = clips.clip_l.text_projection(hidden[torch.arange(2), torch.tensor(end_positions)])
    assert torch.allclose(pooled[:, :64], expected, atol=1e-6)


# --- loading from folders -----------------------------------------------------------------------------


def test_folder_round_trip_is_strict_and_keeps_ties(tmp_path, bundle, tiny_encoders):
    t5, clips = tiny_encoders
    t5.save_pretrained_folder(tmp_path / "text_encoder_3")
    clips.save_pretrained_folder(tmp_path / "text_encoder", tmp_path / "text_encoder_2")
    loaded_t5 = T5TextEncoder.from_pretrained_folder(tmp_path / "text_encoder_3")
    loaded_clips = PooledClipEncoders.from_pretrained_folder(tmp_path / "text_encoder", tmp_path / "text_encoder_2")
    assert loaded_t5.t5.shared.weight is loaded_t5.t5.encoder.embed_tokens.weight
    tokens = bundle.encode(PROMPTS)
    with torch.no_grad():
        assert torch.equal(loaded_t5(tokens["t5_ids"], tokens["t5_mask"]), t5(tokens["t5_ids"], tokens["t5_mask"]))
        assert torch.equal(
            loaded_clips(tokens["clip_l_ids"], tokens["clip_g_ids"]), clips(tokens["clip_l_ids"], tokens["clip_g_ids"])
        )
    half = T5TextEncoder.from_pretrained_folder(tmp_path / "text_encoder_3", dtype=torch.bfloat16)
    assert half.t5.shared.weight.dtype == torch.bfloat16


def test_folder_loading_errors_name_the_fault(tmp_path, tiny_encoders):
    from safetensors.torch import load_file, save_file

    t5, _ = tiny_encoders
    folder = t5.save_pretrained_folder(tmp_path / "t5")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["encoder.final_layer_norm.weight"]
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match="encoder.final_layer_norm.weight"):
        T5TextEncoder.from_pretrained_folder(folder)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(InputError, match="pickle"):
        T5TextEncoder.from_pretrained_folder(pickled)

    with pytest.raises(InputError, match="model_type"):
        PooledClipEncoders.from_pretrained_folder(folder, folder)


def test_checkpoint_style_tokenizer_folders_load_offline(tmp_path, bundle):
    """Real scale reads tokenizer/, tokenizer_2/, tokenizer_3/ with AutoTokenizer: same code path."""
    bundle.save(tmp_path)
    real_layout = PromptEncoderBundle.from_pretrained_folder(tmp_path)  # SD3 defaults: 128 / 77 tokens
    tokens = real_layout.encode(["a red circle"], add_suffix=False)
    assert tokens["t5_ids"].shape == (1, 128) and tokens["clip_l_ids"].shape == (1, 77)
    assert torch.equal(tokens["t5_ids"][0, :32], bundle.encode(["a red circle"])["t5_ids"][0])
    assert real_layout.prompt_suffix == tc.SD3_PROMPT_SUFFIX
    with pytest.raises(InputError):
        PromptEncoderBundle.from_pretrained_folder(tmp_path / "missing")


def test_run_folder_protocol_round_trip(tmp_path, bundle):
    description = json.loads(json.dumps(bundle.describe()))
    assert description["kind"] == "bundle" and description["t5_max_length"] == tc.TINY_T5_MAX_LENGTH
    reloaded = PromptEncoderBundle.load(bundle.save(tmp_path), description)
    assert reloaded.describe() == description
    pair, again = bundle.encode_pair("", "a red circle"), reloaded.encode_pair("", "a red circle")
    assert set(pair) == {"t5_ids", "t5_mask", "clip_l_ids", "clip_g_ids"}
    assert all(torch.equal(pair[key], again[key]) for key in pair) and pair["t5_ids"].shape == (2, 32)
    assert pair["t5_mask"][0].sum() == 1  # row 0 is the (empty) negative prompt: just </s>
    description["vocab_sha256"]["tokenizer_3"] = "0" * 64
    with pytest.raises(InputError, match="vocabulary"):
        PromptEncoderBundle.load(tmp_path, description)
