"""PyramidMMDiT: released layout/counts (meta device), mask truth tables, RoPE, sincos, tiny forwards.

Expected numbers and key lists come from reference/pyramid-flow-facts.md §2 and §6, written by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from neoc.errors import InputError
from neoc.models.checkpoint import load_state_dict_strict
from neoc.models.mmdit import (
    ApplyRoPE6D,
    PyramidMMDiT,
    TemporalRoPE,
    build_joint_attention_mask,
    clip_time_ids,
    sincos_2d_grid,
    timestep_sinusoid,
)
from neoc.zoo.model_configs import SD3_MMDIT_CONFIG, TINY_MMDIT_CONFIG

HIDDEN, HEAD, MLP = 1536, 64, 6144


def released_mmdit_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of ``diffusion_transformer_384p/diffusion_pytorch_model.safetensors`` (facts §6)."""
    shapes: dict[str, tuple[int, ...]] = {
        "pos_embed.pos_embed": (1, 192 * 192, HIDDEN),
        "pos_embed.proj.weight": (HIDDEN, 16, 2, 2),
        "pos_embed.proj.bias": (HIDDEN,),
        "time_text_embed.timestep_embedder.linear_1.weight": (HIDDEN, 256),
        "time_text_embed.timestep_embedder.linear_1.bias": (HIDDEN,),
        "time_text_embed.timestep_embedder.linear_2.weight": (HIDDEN, HIDDEN),
        "time_text_embed.timestep_embedder.linear_2.bias": (HIDDEN,),
        "time_text_embed.text_embedder.linear_1.weight": (HIDDEN, 2048),
        "time_text_embed.text_embedder.linear_1.bias": (HIDDEN,),
        "time_text_embed.text_embedder.linear_2.weight": (HIDDEN, HIDDEN),
        "time_text_embed.text_embedder.linear_2.bias": (HIDDEN,),
        "context_embedder.weight": (HIDDEN, 4096),
        "context_embedder.bias": (HIDDEN,),
        "norm_out.linear.weight": (2 * HIDDEN, HIDDEN),
        "norm_out.linear.bias": (2 * HIDDEN,),
        "proj_out.weight": (64, HIDDEN),
        "proj_out.bias": (64,),
    }
    for i in range(24):
        last = i == 23
        block = f"transformer_blocks.{i}."
        shapes[block + "norm1.linear.weight"] = (6 * HIDDEN, HIDDEN)
        shapes[block + "norm1.linear.bias"] = (6 * HIDDEN,)
        context_rows = 2 * HIDDEN if last else 6 * HIDDEN  # block 23: AdaLayerNormContinuous
        shapes[block + "norm1_context.linear.weight"] = (context_rows, HIDDEN)
        shapes[block + "norm1_context.linear.bias"] = (context_rows,)
        projections = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0"]
        if not last:
            projections.append("to_add_out")
        for name in projections:
            shapes[block + f"attn.{name}.weight"] = (HIDDEN, HIDDEN)
            shapes[block + f"attn.{name}.bias"] = (HIDDEN,)
        for name in ("norm_q", "norm_k", "norm_add_q", "norm_add_k"):
            shapes[block + f"attn.{name}.weight"] = (HEAD,)
        for ff in ("ff",) if last else ("ff", "ff_context"):
            shapes[block + f"{ff}.net.0.proj.weight"] = (MLP, HIDDEN)
            shapes[block + f"{ff}.net.0.proj.bias"] = (MLP,)
            shapes[block + f"{ff}.net.2.weight"] = (HIDDEN, MLP)
            shapes[block + f"{ff}.net.2.bias"] = (HIDDEN,)
    return shapes


@pytest.fixture(scope="module")
def sd3_meta() -> PyramidMMDiT:
    with torch.device("meta"):
        return PyramidMMDiT.from_config(SD3_MMDIT_CONFIG)


def test_sd3_parameter_and_state_dict_counts(sd3_meta):
    assert sum(p.numel() for p in sd3_meta.parameters()) == 2_028_334_144
    state = sd3_meta.state_dict()
    assert len(state) == 779
    assert sum(t.numel() for t in state.values()) == 2_084_957_248
    block_params = [sum(p.numel() for p in b.parameters()) for b in sd3_meta.transformer_blocks]
    assert block_params[:23] == [84_980_992] * 23 and block_params[23] == 54_294_784


def test_sd3_strict_load_of_hand_written_released_keys(sd3_meta):
    released = released_mmdit_shapes()
    assert len(released) == 779
    state = {key: torch.empty(shape, device="meta") for key, shape in released.items()}
    load_state_dict_strict(sd3_meta, state, "released-sd3")  # raises InputError on any difference
    assert {k: tuple(v.shape) for k, v in sd3_meta.state_dict().items()} == released


def test_training_checkpoint_dit_prefix_is_stripped_and_block23_extra_key_rejected(sd3_meta):
    released = released_mmdit_shapes()
    state = {"dit." + key: torch.empty(shape, device="meta") for key, shape in released.items()}
    load_state_dict_strict(sd3_meta, state, "train-ckpt")
    state["dit.transformer_blocks.23.attn.to_add_out.weight"] = torch.empty(HIDDEN, HIDDEN, device="meta")
    with pytest.raises(InputError, match="unexpected tensor 'transformer_blocks.23.attn.to_add_out.weight'"):
        load_state_dict_strict(sd3_meta, state, "train-ckpt")


def test_config_metadata_ignored_and_unknown_key_rejected():
    with torch.device("meta"):
        model = PyramidMMDiT.from_config({**SD3_MMDIT_CONFIG, "_diffusers_version": "0.31.0"})
    assert model.config["use_temporal_causal"] and model.config["interp_condition_pos"]
    with pytest.raises(InputError, match="'num_blocks'"):
        PyramidMMDiT.from_config({**TINY_MMDIT_CONFIG, "num_blocks": 3})


# -- attention mask ---------------------------------------------------------------------------------

# joint sequence: text [t0 valid, t1 valid, t2 pad] + image [f0 f0 | f1 | f2 f2] (2 history frames + current)
TEXT_VALID = torch.tensor([[1, 1, 0]])
IMAGE_TIME = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0])


def test_attention_mask_truth_table_temporal_causal():
    expected = torch.tensor(
        [  # keys: t0 t1 t2 | f0 f0 f1 f2 f2
            [1, 1, 0, 1, 1, 0, 0, 0],  # t0: valid text sees valid text + oldest frame only
            [1, 1, 0, 1, 1, 0, 0, 0],  # t1
            [0, 0, 1, 0, 0, 0, 0, 0],  # t2 (pad): only pad
            [1, 1, 0, 1, 1, 0, 0, 0],  # f0 (oldest history)
            [1, 1, 0, 1, 1, 0, 0, 0],
            [1, 1, 0, 1, 1, 1, 0, 0],  # f1 (newer history): not the current frame
            [1, 1, 0, 1, 1, 1, 1, 1],  # f2 (current): everything valid up to itself
            [1, 1, 0, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    mask = build_joint_attention_mask(TEXT_VALID, IMAGE_TIME, use_temporal_causal=True)
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.bool
    assert torch.equal(mask[0, 0], expected)


def test_attention_mask_truth_table_without_causality():
    valid = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool)
    expected = valid[:, None] == valid[None, :]
    mask = build_joint_attention_mask(TEXT_VALID, IMAGE_TIME, use_temporal_causal=False)
    assert torch.equal(mask[0, 0], expected)


def test_clip_time_ids_count_frames_oldest_first():
    clips = [torch.zeros(1, 16, 2, 4, 4), torch.zeros(1, 16, 1, 8, 8), torch.zeros(1, 16, 1, 16, 16)]
    ids = clip_time_ids(clips, patch_size=2)
    assert ids.tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 16 + [3.0] * 64


# -- RoPE -------------------------------------------------------------------------------------------


def test_rope_shape_and_identity_at_time_zero():
    rope = TemporalRoPE(head_dim=64)(torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3))
    assert rope.shape == (2, 3, 1, 32, 2, 2) and rope.dtype == torch.float32
    identity = torch.eye(2).expand(32, 2, 2)
    assert torch.equal(rope[:, :2, 0], identity.expand(2, 2, 32, 2, 2))
    # time 1, pair i: angle theta^(-2i/64); pair 0 rotates by 1 rad, pair 16 by 0.01 rad
    for pair, angle in ((0, 1.0), (16, 0.01)):
        c, s = math.cos(angle), math.sin(angle)
        assert torch.allclose(rope[0, 2, 0, pair], torch.tensor([[c, -s], [s, c]]), atol=1e-7)


def test_rope_rotates_interleaved_pairs():
    x = torch.zeros(1, 1, 1, 64)
    x[..., 0], x[..., 3] = 1.0, 2.0  # pair 0 = (1, 0), pair 1 = (0, 2)
    rope = TemporalRoPE(64)(torch.tensor([[1.0]]))
    q, _ = ApplyRoPE6D()(x, x, rope)
    angle1 = 10000 ** (-2 / 64)
    assert torch.allclose(q[0, 0, 0, :2], torch.tensor([math.cos(1.0), math.sin(1.0)]), atol=1e-6)
    assert torch.allclose(q[0, 0, 0, 2:4], torch.tensor([-2 * math.sin(angle1), 2 * math.cos(angle1)]), atol=1e-6)
    assert torch.count_nonzero(q[..., 4:]) == 0


# -- positions and timestep -------------------------------------------------------------------------


def test_2d_sincos_value_by_hand():
    # D = 8, grid 6, base 2: coordinate = index / 3; omega = [1, 1/100] per 1D half of size 4.
    table = sincos_2d_grid(8, grid_size=6, base_size=2)
    row, col = 1, 4
    x, y = col / 3, row / 3  # first half encodes the column, second half the row
    expected = [math.sin(x), math.sin(x / 100), math.cos(x), math.cos(x / 100),
                math.sin(y), math.sin(y / 100), math.cos(y), math.cos(y / 100)]
    assert torch.allclose(table[row * 6 + col], torch.tensor(expected), atol=1e-7)


def test_history_positions_are_the_shrunk_current_crop():
    model = PyramidMMDiT.from_config(TINY_MMDIT_CONFIG)
    embed = model.pos_embed
    grid = 24
    table = embed.pos_embed.reshape(grid, grid, -1)
    current = embed.spatial_position((8, 8), (8, 8)).reshape(8, 8, -1)
    assert torch.equal(current, table[8:16, 8:16])  # centre crop: top = left = (24 - 8) // 2
    # bilinear 2x shrink (align_corners=False) = mean of each 2x2 block of the current crop
    history = embed.spatial_position((4, 4), (8, 8)).reshape(4, 4, -1)
    block_mean = current.reshape(4, 2, 4, 2, -1).mean(dim=(1, 3))
    assert torch.allclose(history, block_mean, atol=1e-6)


def test_timestep_sinusoid_is_cos_then_sin_on_raw_scale():
    emb = timestep_sinusoid(torch.tensor([500.0]), channels=256)
    assert emb.shape == (1, 256)
    assert emb[0, 0].item() == pytest.approx(math.cos(500.0), abs=1e-5)
    assert emb[0, 128].item() == pytest.approx(math.sin(500.0), abs=1e-5)
    freq = math.exp(-math.log(10000) * 1 / 128)
    assert emb[0, 129].item() == pytest.approx(math.sin(500.0 * freq), abs=1e-4)


# -- tiny forwards ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> PyramidMMDiT:
    torch.manual_seed(0)
    model = PyramidMMDiT.from_config(TINY_MMDIT_CONFIG).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05)
    return model


def tiny_inputs(batch: int = 2, text_length: int = 10):
    generator = torch.Generator().manual_seed(1)
    clips = [torch.randn(batch, 16, 1, 4, 4, generator=generator),  # frame 0 at 1/4 res
             torch.randn(batch, 16, 1, 8, 8, generator=generator),  # frame 1 at 1/2 res
             torch.randn(batch, 16, 1, 16, 16, generator=generator)]  # current, full res
    t5 = torch.randn(batch, text_length, 192, generator=generator)
    mask = torch.ones(batch, text_length, dtype=torch.long)
    mask[0, 6:] = 0
    pooled = torch.randn(batch, 128, generator=generator)
    timestep = torch.tensor([744.0, 386.0])[:batch]
    return clips, t5, mask, pooled, timestep


def test_tiny_forward_with_lower_resolution_history_returns_current_clip(tiny):
    clips, t5, mask, pooled, timestep = tiny_inputs()
    with torch.no_grad():
        out = tiny([clips], t5, mask, pooled, timestep)
    assert isinstance(out, list) and len(out) == 1
    assert out[0].shape == (2, 16, 1, 16, 16)
    assert torch.isfinite(out[0]).all()


def test_padded_text_values_do_not_matter(tiny):
    clips, t5, mask, pooled, timestep = tiny_inputs()
    changed = t5.clone()
    changed[0, 6:] += 5.0  # sample 0's padding
    with torch.no_grad():
        a = tiny([clips], t5, mask, pooled, timestep)[0]
        b = tiny([clips], changed, mask, pooled, timestep)[0]
    assert torch.allclose(a, b, atol=1e-6)
    changed[0, 2] += 5.0  # a valid token does matter
    with torch.no_grad():
        c = tiny([clips], changed, mask, pooled, timestep)[0]
    assert not torch.allclose(a, c, atol=1e-3)


def test_split_context_embedder_takes_projected_context(tiny):
    import copy

    clips, t5, mask, pooled, timestep = tiny_inputs()
    split = copy.deepcopy(tiny)
    embedder = split.split_context_embedder()
    assert isinstance(embedder, torch.nn.Linear) and embedder.in_features == 192
    assert not any(k.startswith("context_embedder") for k in split.state_dict())
    with torch.no_grad():
        a = tiny([clips], t5, mask, pooled, timestep)[0]
        b = split([clips], embedder(t5), mask, pooled, timestep)[0]
    assert torch.equal(a, b)


def test_additive_mask_fill_value_matches_bool_mask(tiny):
    clips, t5, mask, pooled, timestep = tiny_inputs()
    with torch.no_grad():
        a = tiny([clips], t5, mask, pooled, timestep)[0]
        tiny.attention_mask_fill_value = -1e9
        try:
            b = tiny([clips], t5, mask, pooled, timestep)[0]
        finally:
            tiny.attention_mask_fill_value = None
    assert torch.allclose(a, b, atol=1e-5)


def test_multi_stage_rows_are_interleaved_like_the_reference(tiny):
    clips, t5, mask, pooled, timestep = tiny_inputs()
    stage_b = [torch.randn(2, 16, 1, 8, 8)]
    # row b*S + s belongs to sample b of stage s
    inter = lambda x, y: torch.stack([x, y], dim=1).flatten(0, 1)  # noqa: E731
    t5_b, pooled_b, time_b = torch.randn_like(t5), torch.randn_like(pooled), torch.tensor([100.0, 200.0])
    with torch.no_grad():
        both = tiny([clips, stage_b], inter(t5, t5_b), inter(mask, mask), inter(pooled, pooled_b),
                    inter(timestep, time_b))
        alone_a = tiny([clips], t5, mask, pooled, timestep)[0]
        alone_b = tiny([stage_b], t5_b, mask, pooled_b, time_b)[0]
    assert torch.allclose(both[0], alone_a, atol=1e-5) and torch.allclose(both[1], alone_b, atol=1e-5)
