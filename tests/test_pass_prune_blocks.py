"""prune-blocks: block importance (visual / text, per CFG branch), visual impact, selection policies, block
mappings, the IR rewrite and a tiny end-to-end run with both finetune stages (and resume).

Everything runs on a toy pipeline around a real (small) :class:`PyramidMMDiT`: 4 blocks, 64x64 video, 9 frames,
1-1-1 CFG schedule — the whole pass takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import math

import attrs
import pytest
import torch
from torch import nn

import neoc.passes  # noqa: F401
from neoc.ir.components import register_builder, register_prompt_encoder
from neoc.ir.pipeline import Pipeline, count_params
from neoc.ir.schedule import PipelineSpec, Schedule
from neoc.models.mmdit import PyramidMMDiT
from neoc.prune.finetune import LossWeights, PrunedFlowObjective, block_mapping
from neoc.prune.importance import BlockImportance, BlockProbe, token_cosine
from neoc.prune.selection import POLICIES, block_scores, choose_blocks, select_removed
from neoc.prune.surgery import pruned_copy, remove_blocks, without_blocks
from neoc.prune.visual import BlockImpact, VisualImpact, video_psnr
from neoc.testing import ToyDecoder, ToyTextEncoder

MMDIT = dict(sample_size=32, patch_size=2, in_channels=16, num_layers=4, attention_head_dim=8,
             num_attention_heads=2, caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=16,
             joint_attention_dim=16)
TEXT_LENGTH = 8


# ---- a toy pipeline around a small real MMDiT -------------------------------------------------------------------
class ToyClip(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 8):
        super().__init__()
        self.vocab, self.dim = vocab, dim
        self.embed = nn.Embedding(vocab, dim)

    def forward(self, clip_l_ids, clip_g_ids):
        return self.embed(clip_l_ids).mean(1) + self.embed(clip_g_ids).mean(1)


class ToyVideoEncoder(nn.Module):
    """Frames [B, 3, F, H, W] -> latents [B, 16, 1 + (F-1)/8, H/8, W/8] (every 8th frame, 8x8 average pool)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.channels = channels
        self.proj = nn.Conv3d(3, channels, 1)

    def forward(self, frames):
        picked = frames[:, :, ::8]
        pooled = nn.functional.avg_pool3d(picked, (1, 8, 8))
        return self.proj(pooled)


class ToyPromptEncoder:
    """Word-hash tokens for T5 and both CLIPs, with the PromptEncoderBundle interface (encode / encode_pair)."""

    kind = "test-prune"

    def __init__(self, vocab: int = 64, length: int = TEXT_LENGTH):
        self.vocab, self.length = vocab, length

    def _ids(self, text: str):
        import zlib

        words = text.lower().split()[: self.length - 1]
        ids = [1 + zlib.crc32(w.encode()) % (self.vocab - 2) for w in words] + [self.vocab - 1]
        return ids + [0] * (self.length - len(ids)), [1] * len(ids) + [0] * (self.length - len(ids))

    def encode(self, prompts, add_suffix: bool = True) -> dict:
        rows = [self._ids(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
        ids = torch.tensor([r[0] for r in rows])
        return {"t5_ids": ids, "t5_mask": torch.tensor([r[1] for r in rows]), "clip_l_ids": ids, "clip_g_ids": ids}

    def encode_pair(self, negative: str, positive: str) -> dict:
        return self.encode([negative, positive])

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab": self.vocab, "length": self.length}

    def save(self, folder) -> None:
        from pathlib import Path

        Path(folder).mkdir(parents=True, exist_ok=True)


register_prompt_encoder("test-prune", lambda folder, d: ToyPromptEncoder(d["vocab"], d["length"]))
register_builder("test.prune.ToyClip", ToyClip, lambda c: ToyClip(**c), lambda m: {"vocab": m.vocab, "dim": m.dim})
register_builder("test.prune.ToyVideoEncoder", ToyVideoEncoder, lambda c: ToyVideoEncoder(**c),
                 lambda m: {"channels": m.channels})

SCHEDULE = Schedule(first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1), guidance_scale=3.0,
                    video_guidance_scale=2.0, label="short-cfg")


def small_mmdit(seed: int = 0, **overrides) -> PyramidMMDiT:
    torch.manual_seed(seed)
    model = PyramidMMDiT(**{**MMDIT, **overrides})
    for module in model.modules():  # larger random modulations than the default init: blocks really act
        if isinstance(module, nn.Linear) and module.out_features == 6 * module.in_features:
            nn.init.normal_(module.weight, std=0.3)
    return model.eval()


def mmdit_pipeline(seed: int = 0) -> Pipeline:
    denoiser = small_mmdit(seed)
    context_embedder = denoiser.split_context_embedder()
    torch.manual_seed(seed + 1)
    spec = PipelineSpec("toy-mmdit", frames=9, height=64, width=64, t5_max_length=TEXT_LENGTH,
                        clip_max_length=TEXT_LENGTH, prompt_suffix="", negative_prompt="")
    components = {"text_encoder": ToyTextEncoder(width=16), "clip_encoders": ToyClip(),
                  "context_embedder": context_embedder, "vae_encoder": ToyVideoEncoder(), "denoiser": denoiser,
                  "vae_decoder": ToyDecoder()}
    pipe = Pipeline(spec, SCHEDULE, components, prompt_encoder=ToyPromptEncoder(), source="toy-mmdit")
    for module in pipe.components.values():
        module.eval()
    return pipe


def denoiser_inputs(batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    clips = [torch.randn(batch, 16, 1, 4, 4, generator=gen), torch.randn(batch, 16, 1, 8, 8, generator=gen)]
    context = torch.randn(batch, TEXT_LENGTH, 16, generator=gen)
    mask = torch.ones(batch, TEXT_LENGTH, dtype=torch.long)
    mask[:, 5:] = 0
    pooled = torch.randn(batch, 8, generator=gen)
    timestep = torch.full((batch,), 500.0)
    return [clips], context, mask, pooled, timestep


def make_identity(block: nn.Module) -> None:
    """Zero a block's adaLN modulations: every gate is 0, so both streams pass through unchanged."""
    for norm in (block.norm1, block.norm1_context):
        nn.init.zeros_(norm.linear.weight)
        nn.init.zeros_(norm.linear.bias)


# ---- block importance --------------------------------------------------------------------------------------------
def test_importance_identity_block_scores_zero_and_last_block_has_no_text():
    denoiser = small_mmdit()
    denoiser.context_embedder = nn.Identity()
    make_identity(denoiser.transformer_blocks[1])
    with torch.no_grad(), BlockProbe(denoiser) as probe:
        denoiser(*denoiser_inputs(batch=2))
        denoiser(*denoiser_inputs(batch=1, seed=1))
    result = probe.result(videos=1)
    assert result.num_blocks == 4 and probe.calls == 2
    assert result.visual[1] < 1e-6 and result.text[1] < 1e-6
    assert all(result.visual[k] > 1e-4 for k in (0, 2, 3))
    assert all(result.text[k] > 1e-4 for k in (0, 2))
    assert result.text[3] is None  # the final block's text stream is discarded
    assert set(result.text_by_branch) == {"negative", "positive"}
    assert all(values[3] is None for values in result.text_by_branch.values())
    # a batch-1 call (no CFG) counts as the positive branch only: positive saw 2 rows, negative 1
    rows = result.rows()
    assert [r["block"] for r in rows] == [0, 1, 2, 3]
    assert {"block", "visual", "text", "text_positive", "text_negative"} <= set(rows[0])
    assert all(0.0 <= r["visual"] <= 2.0 for r in rows)
    assert BlockImportance.from_dict(result.to_dict()).rows() == rows


def test_token_cosine_ignores_padded_text():
    a = torch.randn(2, 4, 8)
    b = a.clone()
    b[:, 2:] = -b[:, 2:]  # padded positions point the other way
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    assert torch.allclose(token_cosine(a, b, mask), torch.ones(2), atol=1e-6)
    assert torch.allclose(token_cosine(a, b), torch.zeros(2), atol=1e-6)


# ---- surgery ----------------------------------------------------------------------------------------------------
def test_remove_blocks_updates_params_and_config_and_protects_the_last_block():
    denoiser = small_mmdit()
    block_params = count_params(denoiser.transformer_blocks[0])
    before = count_params(denoiser)
    student = pruned_copy(denoiser, [0, 2])
    assert len(denoiser.transformer_blocks) == 4 and denoiser.config["num_layers"] == 4  # original untouched
    assert len(student.transformer_blocks) == 2 and student.config["num_layers"] == 2
    assert count_params(student) == before - 2 * block_params
    assert student.transformer_blocks[-1].context_pre_only
    with pytest.raises(ValueError, match="context_pre_only"):
        remove_blocks(pruned_copy(denoiser, []), [3])
    with without_blocks(denoiser, [1]):
        assert len(denoiser.transformer_blocks) == 3
    assert len(denoiser.transformer_blocks) == 4


def test_video_psnr():
    video = torch.zeros(2, 3, 5, 8, 8)
    assert float(video_psnr(video, video)[0]) == 100.0
    assert math.isclose(float(video_psnr(video + 0.2, video)[0]), 10 * math.log10(4 / 0.04), rel_tol=1e-5)


# ---- selection ----------------------------------------------------------------------------------------------------
def synthetic_scores() -> tuple[BlockImportance, VisualImpact]:
    importance = BlockImportance(visual=[0.9, 0.1, 0.2, 0.3, 0.05, 0.8],
                                 text=[0.5, 0.6, 0.05, 0.1, 0.7, None])
    impact = VisualImpact([BlockImpact(0, 20.0, 0.5), BlockImpact(1, 40.0, 0.01), BlockImpact(2, 22.0, 0.4),
                           BlockImpact(3, 35.0, 0.05), BlockImpact(4, 30.0, 0.1)], videos=1)
    return importance, impact


def test_selection_policies():
    importance, impact = synthetic_scores()
    chosen = {p: choose_blocks(importance, 4, p, impact)[0] for p in POLICIES}
    assert chosen["visual"] == [1, 4]
    assert chosen["text"] == [2, 3]
    assert chosen["average"] == [2, 3]  # averages 0.7, 0.35, 0.125, 0.2, 0.375
    assert chosen["impact"] == [1, 3]
    assert chosen["combined"] == [1, 3]
    # combined with visual_weight 0 is the min-max normalised average
    assert choose_blocks(importance, 4, "combined", impact, visual_weight=0.0)[0] == chosen["average"]
    # the final block is never a candidate, even with the lowest score
    scores = block_scores(importance, "visual")
    assert 5 not in scores
    with pytest.raises(ValueError, match="keep=0"):
        select_removed(scores, 6, 0)
    with pytest.raises(ValueError, match="removable"):
        select_removed({0: 0.1, 1: 0.2}, 6, 3)
    with pytest.raises(ValueError, match="needs the visual impact"):
        block_scores(importance, "combined")


def test_select_removed_limits():
    scores = {0: 0.3, 1: 0.1, 2: 0.2}
    assert select_removed(scores, 4, 3) == [1]
    assert select_removed(scores, 4, 1) == [0, 1, 2]
    with pytest.raises(ValueError):
        select_removed(scores, 4, 5)


# ---- stage 2 mappings and objective ----------------------------------------------------------------------------------
def test_block_mappings():
    kept = [0, 1, 3, 5, 7]  # 8 teacher blocks, 2, 4, 6 removed
    assert block_mapping(kept, 8, "simple") == [0, 1, 3, 5, 7]
    # next-block: output of student block j -> input of the teacher's next kept block = output of (next - 1)
    assert block_mapping(kept, 8, "next-block") == [0, 2, 4, 6, 7]
    with pytest.raises(ValueError):
        block_mapping(kept, 8, "other")


class Conditioning(nn.Module):
    """Constant text conditioning (context, mask, pooled) for the finetune objectives."""

    def forward(self, tokens):
        batch = tokens["t5_mask"].shape[0]
        return torch.ones(batch, TEXT_LENGTH, 16), tokens["t5_mask"], torch.ones(batch, 8)


def test_stage2_losses_vanish_for_an_identical_student():
    from neoc.train.flow_matching import make_flow_batch

    teacher = small_mmdit()
    teacher.context_embedder = nn.Identity()

    tokens = {"t5_mask": torch.ones(2, TEXT_LENGTH, dtype=torch.long)}
    batch = make_flow_batch(torch.randn(2, 16, 2, 8, 8), 1, tokens, torch.Generator().manual_seed(0))
    weights = LossWeights(visual=1.0, text=1.0, teacher_fm=1.0, data_fm=0.0)
    same = PrunedFlowObjective(pruned_copy(teacher, []), Conditioning(), weights, teacher=teacher,
                               kept=[0, 1, 2, 3])
    loss, metrics = same(batch)
    assert float(loss.detach()) < 1e-6
    assert set(metrics) == {"loss_teacher_fm", "loss_feature_visual", "loss_feature_text"}
    pruned = PrunedFlowObjective(pruned_copy(teacher, [1]), Conditioning(), weights, teacher=teacher,
                                 kept=[0, 2, 3], mapping="next-block")
    assert pruned.targets == [1, 2, 3]
    loss, _ = pruned(batch)
    assert float(loss.detach()) > 1e-4
    loss.backward()
    assert all(p.grad is not None for p in pruned.student.transformer_blocks.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(k.startswith("teacher") for k in pruned.state_dict())  # checkpoints hold the student only


def test_object_weighted_finetune_losses():
    """``fg_weight``: FlowData batches carry 1 + w * object share of the trained frame; the data and teacher
    flow-matching terms become sum(w e^2) / sum(w), equal to plain MSE when w is 0."""
    import numpy as np

    from neoc.data.toyworld import latent_object_mask, sample_scene
    from neoc.errors import InputError
    from neoc.prune.data import FlowData, LatentSet
    from neoc.train.flow_matching import weighted_mse

    scenes = [sample_scene(np.random.default_rng(s)) for s in range(3)]
    data = LatentSet(torch.randn(3, 16, 2, 8, 8), scenes)
    prompts = ToyPromptEncoder()
    plain = FlowData(data, prompts, 2, 3, 1 / 3, first_frame_prob=0.0).draw(torch.Generator().manual_seed(0))
    flow = FlowData(data, prompts, 2, 3, 1 / 3, first_frame_prob=0.0, fg_weight=5.0)
    weighted = flow.draw(torch.Generator().manual_seed(0))
    assert plain.loss_weights is None and all(torch.equal(a, b) for a, b in zip(plain.targets, weighted.targets))
    full = weighted.loss_weights[-1][:, 0, 0]                                         # last stage: full resolution
    candidates = [1 + 5 * latent_object_mask(scene, 2, 8)[1] for scene in scenes]    # unit 1 of each clip
    assert all(any(torch.allclose(item, c) for c in candidates) for item in full) and float(full.max()) > 2.0
    with pytest.raises(InputError, match="fg_weight"):
        FlowData(data, prompts, 2, 3, 1 / 3, fg_weight=-1.0)

    teacher = small_mmdit()
    teacher.context_embedder = nn.Identity()

    objective = PrunedFlowObjective(pruned_copy(teacher, [1]), Conditioning(),
                                    LossWeights(teacher_fm=1.0, data_fm=1.0), teacher=teacher, kept=[0, 2, 3])
    with torch.no_grad():
        _, metrics = objective(weighted)
        _, plain_metrics = objective(dataclasses.replace(weighted, loss_weights=None))
        pred = objective._call(objective.student, weighted, *Conditioning()(weighted.tokens))
    by_hand = torch.stack([weighted_mse(p, t, w) for p, t, w in
                           zip(pred, weighted.targets, weighted.loss_weights)]).mean()
    assert torch.isclose(metrics["loss_data_fm"], by_hand)
    assert not torch.isclose(metrics["loss_data_fm"], plain_metrics["loss_data_fm"])


# ---- the pass ------------------------------------------------------------------------------------------------------
RUN = dict(keep=2, policy="combined", calib_prompts=2, samples_per_prompt=1, impact_prompts=1, train_videos=4,
           val_videos=2, val_batches=2, batch_size=2, stage1_steps=2, stage2_steps=2, stage1_lr=1e-4,
           stage2_lr=1e-4, checkpoint_every=0, quality_videos=2)


@pytest.fixture(scope="module")
def pass_run(tmp_path_factory):
    from neoc.deploy.testing import run_through_manager

    pipe = mmdit_pipeline()
    teacher_params = count_params(pipe.component("denoiser"))
    run_dir = tmp_path_factory.mktemp("prune-run")
    out, record, folder = run_through_manager(pipe, "prune-blocks", run_dir, **RUN)
    return out, record, folder, teacher_params, run_dir


def test_pass_rewrites_the_ir_and_reports_contract_metrics(pass_run):
    out, record, folder, teacher_params, _ = pass_run
    metrics = record.metrics
    denoiser = out.component("denoiser")
    assert len(denoiser.transformer_blocks) == 2 and denoiser.config["num_layers"] == 2
    assert denoiser.transformer_blocks[-1].context_pre_only
    assert metrics["params_before"] == teacher_params
    assert metrics["params_after"] == count_params(denoiser) < teacher_params
    assert len(metrics["removed_blocks"]) == 2 and 3 not in metrics["removed_blocks"]
    assert metrics["kept_blocks"] == sorted(set(range(4)) - set(metrics["removed_blocks"]))
    assert [r["block"] for r in metrics["importance"]] == [0, 1, 2, 3]
    assert metrics["importance"][-1]["text"] is None
    assert all(r["text"] is not None and r["visual"] > 0 for r in metrics["importance"][:-1])
    assert {"quality_stage1", "quality_stage2", "quality_teacher"} <= set(metrics)
    assert metrics["quality_stage1"] is None and "toy-world" in metrics["quality_note"]
    assert set(metrics["selection"]) == set(POLICIES)
    assert metrics["removed_blocks"] == metrics["selection"]["combined"]
    assert [b["block"] for b in metrics["visual_impact"]["blocks"]] == [0, 1, 2]
    for name in ("teacher", "pruned", "stage1", "stage2"):
        assert math.isfinite(metrics["validation"][name]["data_fm"])
    assert metrics["training"]["stage1"]["steps"] == 2 and metrics["training"]["stage2"]["steps"] == 2
    assert metrics["training"]["stage2"]["targets"] == metrics["kept_blocks"]  # simple mapping
    # the pruned pipeline still generates, and the run folder rebuilds the 2-block denoiser
    video = out.generate("a red circle moves left", seed=0)
    assert video.shape == (1, 3, 9, 64, 64) and torch.isfinite(video).all()
    from neoc.ir.runfolder import load_pipeline

    loaded = load_pipeline(folder)
    assert len(loaded.component("denoiser").transformer_blocks) == 2
    assert out.nfe() == loaded.nfe()


def test_pass_artifacts(pass_run):
    from pathlib import Path

    _, record, folder, _, run_dir = pass_run
    names = {Path(p).name for p in record.artifacts.values()}
    assert {"importance.png", "drop_one_frames.png", "scores.json"} <= names


def test_pass_resumes_from_its_checkpoints(pass_run, tmp_path):
    """Same settings and artifact folder: scores come from the cache and both stages resume at their end."""
    from neoc.deploy.testing import apply_pass

    _, record, _, _, run_dir = pass_run
    work = next(p for p in run_dir.rglob("scores.json")).parent
    result = apply_pass(mmdit_pipeline(), "prune-blocks", work, **RUN)
    assert result.metrics["training"]["stage1"]["resumed_from"] == 2
    assert result.metrics["training"]["stage2"]["resumed_from"] == 2
    assert result.metrics["removed_blocks"] == record.metrics["removed_blocks"]
    assert result.metrics["importance"] == record.metrics["importance"]


def test_explicit_blocks_and_preconditions(tmp_path):
    from neoc.deploy.testing import apply_pass
    from neoc.errors import CheckFailed

    with pytest.raises(CheckFailed, match="keep"):
        apply_pass(mmdit_pipeline(), "prune-blocks", tmp_path, **{**RUN, "keep": 4})
    with pytest.raises(CheckFailed, match="context_pre_only"):
        apply_pass(mmdit_pipeline(), "prune-blocks", tmp_path, **{**RUN, "keep": 3, "blocks": [3]})
    from neoc.testing import toy_pipeline

    with pytest.raises(CheckFailed, match="not an MMDiT"):
        apply_pass(toy_pipeline(), "prune-blocks", tmp_path, **RUN)


def test_analyze_uses_explicit_blocks_on_meta():
    from neoc.passes.prune_blocks import PruneBlocks, PruneBlocksConfig
    from neoc.zoo.builtin import build

    pipe = build("builtin:pyramid-tiny", device="meta")
    PruneBlocks(PruneBlocksConfig(keep=6, blocks=(1, 2))).analyze(pipe)
    denoiser = pipe.component("denoiser")
    assert len(denoiser.transformer_blocks) == 6 and denoiser.config["num_layers"] == 6
    assert attrs.fields_dict(PruneBlocksConfig)["policy"].default == "combined"
