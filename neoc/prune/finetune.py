"""The two finetune stages of a pruned MMDiT (Neodragon §3.3), run as a curriculum: Stage 1, then Stage 2.

**Stage 1** — data flow matching: the pruned denoiser alone, trained with Pyramid-Flow's pyramidal flow-matching
objective on clean latents (history corrupted with noise), Adam at a fixed small LR (paper: 300 iterations, 3e-5).

**Stage 2** — full-teacher distillation. The unpruned denoiser (frozen) sees the same noisy inputs; the loss is

    w_visual * sum_j MSE(z^s_j, z^t_{m(j)}) / E[(z^t_{m(j)})^2]      (visual tokens, every student block j)
  + w_text   * sum_j (1 - cos(t^s_j, t^t_{m(j)}))                     (valid text tokens, blocks with a text output)
  + w_teacher_fm * MSE(v^s, v^t)  +  w_data_fm * MSE(v^s, v_data)      (teacher / data flow matching)

(block sums are means over the mapped blocks). The visual MSE is divided by the teacher feature's mean square so
every block weighs the same whatever its activation scale (a plain MSE would be dominated by the deepest blocks).
Block mapping ``m`` (Fig. 11), with ``kept`` the original ids of the student's blocks:

* ``simple``:     student block j -> the teacher's block ``kept[j]`` output;
* ``next-block``: student block j -> the *input* of the teacher's next available block ``kept[j+1]``, i.e. the
  output of teacher block ``kept[j+1] - 1``; the final block always matches the teacher's final block.

Both stages go through the shared :class:`neoc.train.loop.Trainer` (torchrun / DDP, checkpoints, resume). The
frozen parts (teacher, text side) are kept out of the objective's ``state_dict`` so checkpoints hold only the
student and its optimizer.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from neoc.train.flow_matching import weighted_mse

MAPPINGS = ("simple", "next-block")


def block_mapping(kept: Sequence[int], teacher_blocks: int, mapping: str) -> list[int]:
    """Teacher block whose *output* each student block is matched to."""
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping {mapping!r}: expected one of {', '.join(MAPPINGS)}")
    kept = list(kept)
    if mapping == "simple":
        return kept
    return [kept[j + 1] - 1 for j in range(len(kept) - 1)] + [teacher_blocks - 1]


class BlockTaps:
    """Forward hooks recording every block's ``(text_out, image_out)`` per call, in call order."""

    def __init__(self, blocks: Sequence[nn.Module]):
        self.blocks = list(blocks)
        self.outputs: list[list[tuple]] = [[] for _ in self.blocks]
        self._handles: list = []

    def _hook(self, index: int):
        def hook(_module, _args, output):
            self.outputs[index].append(output)
        return hook

    def __enter__(self) -> "BlockTaps":
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@attrs.frozen
class LossWeights:
    visual: float = 0.0
    text: float = 0.0
    teacher_fm: float = 0.0
    data_fm: float = 1.0

    @property
    def needs_teacher(self) -> bool:
        return self.visual > 0 or self.text > 0 or self.teacher_fm > 0

    @property
    def needs_features(self) -> bool:
        return self.visual > 0 or self.text > 0


def masked_cosine_distance(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-6)  # [B, L]
    weight = mask.to(cos.dtype)
    return ((1.0 - cos) * weight).sum() / weight.sum().clamp_min(1.0)


class PrunedFlowObjective(nn.Module):
    """``forward(FlowBatch) -> (loss, metrics)`` for the pruned student (its parameters are the only trainable
    ones). ``teacher`` / ``conditioning`` are held outside the module tree (see :meth:`frozen_to`)."""

    def __init__(self, student: nn.Module, conditioning: nn.Module, weights: LossWeights,
                 teacher: nn.Module | None = None, kept: Sequence[int] | None = None, mapping: str = "simple"):
        super().__init__()
        self.student = student
        self.weights = weights
        self._frozen = {"conditioning": conditioning, "teacher": teacher}
        if weights.needs_teacher and teacher is None:
            raise ValueError("teacher losses need the unpruned teacher")
        self.targets: list[int] = []
        if teacher is not None:
            teacher.requires_grad_(False).eval()
            kept = list(kept if kept is not None else range(len(student.transformer_blocks)))
            if len(kept) != len(student.transformer_blocks):
                raise ValueError(f"kept {kept} does not match the student's {len(student.transformer_blocks)} blocks")
            self.targets = block_mapping(kept, len(teacher.transformer_blocks), mapping)

    def frozen_to(self, device) -> "PrunedFlowObjective":
        for module in self._frozen.values():
            if module is not None:
                module.to(device)
        return self

    @property
    def teacher(self) -> nn.Module | None:
        return self._frozen["teacher"]

    def _call(self, denoiser, batch, context, mask, pooled):
        stages = len(batch.sample)
        rows = lambda x: x.repeat_interleave(stages, dim=0)  # noqa: E731  [B] -> [B*S], row b*S + s
        return denoiser(batch.sample, rows(context), rows(mask), rows(pooled), batch.timesteps)

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.weights
        context, mask, pooled = self._frozen["conditioning"](batch.tokens)
        teacher_pred, teacher_taps = None, None
        if w.needs_teacher:
            with torch.no_grad(), ExitStack() as stack:
                if w.needs_features:
                    teacher_taps = stack.enter_context(BlockTaps(self.teacher.transformer_blocks))
                teacher_pred = self._call(self.teacher, batch, context, mask, pooled)
        with ExitStack() as stack:
            student_taps = stack.enter_context(BlockTaps(self.student.transformer_blocks)) if w.needs_features \
                else None
            pred = self._call(self.student, batch, context, mask, pooled)
        terms: dict[str, torch.Tensor] = {}
        loss_weights = batch.loss_weights or [None] * len(pred)  # object-weighted (FlowData fg_weight) or plain
        if w.data_fm > 0:
            terms["data_fm"] = torch.stack([weighted_mse(p, t, lw)
                                            for p, t, lw in zip(pred, batch.targets, loss_weights)]).mean()
        if w.teacher_fm > 0:
            terms["teacher_fm"] = torch.stack([weighted_mse(p, t.float(), lw)
                                               for p, t, lw in zip(pred, teacher_pred, loss_weights)]).mean()
        if w.needs_features:
            visual, text = [], []
            for j, target in enumerate(self.targets):
                for (s_text, s_image), (t_text, t_image) in zip(student_taps.outputs[j], teacher_taps.outputs[target]):
                    t_image = t_image.float()
                    visual.append(F.mse_loss(s_image.float(), t_image) / t_image.pow(2).mean().clamp_min(1e-8))
                    if s_text is not None and t_text is not None:
                        text.append(masked_cosine_distance(s_text, t_text, mask))
            if w.visual > 0:
                terms["feature_visual"] = torch.stack(visual).mean()
            if w.text > 0 and text:
                terms["feature_text"] = torch.stack(text).mean()
        weight = {"data_fm": w.data_fm, "teacher_fm": w.teacher_fm, "feature_visual": w.visual,
                  "feature_text": w.text}
        loss = sum(weight[k] * v for k, v in terms.items())
        return loss, {f"loss_{k}": v.detach() for k, v in terms.items()}


def train_stage(objective: PrunedFlowObjective, batch_fn, steps: int, lr: float, out_dir: Path | None, seed: int,
                name: str, ema_decay: float = 0.0, checkpoint_every: int = 0, warmup: int = 0,
                quiet: bool = False, device: str | None = None):
    """Adam at a fixed LR (after an optional linear warm-up) through the shared trainer; loads the EMA weights
    into the student at the end when ``ema_decay`` > 0. Returns the :class:`~neoc.train.loop.TrainResult`."""
    from neoc.train.loop import TrainConfig, Trainer, warmup_constant

    params = [p for p in objective.student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    config = TrainConfig(steps=steps, out_dir=out_dir, seed=seed, checkpoint_every=checkpoint_every,
                         keep_checkpoints=1, log_every=max(1, min(25, steps // 5 or 1)), grad_clip=1.0,
                         ema_decay=ema_decay or None, name=name, progress=False if quiet else None,
                         tensorboard=out_dir is not None, device=device)
    trainer = Trainer(objective, optimizer, warmup_constant(warmup), config)
    objective.frozen_to(trainer.info.device)
    result = trainer.fit(batch_fn)
    if trainer.ema is not None and steps > 0:
        prefix = "student."
        averaged = {k[len(prefix):]: v for k, v in trainer.ema_state_dict().items() if k.startswith(prefix)}
        state = objective.student.state_dict()
        objective.student.load_state_dict({k: v.to(state[k].dtype) for k, v in averaged.items()}, strict=True)
    return result


@torch.no_grad()
def validation_losses(denoiser: nn.Module, conditioning: nn.Module, batches: Sequence,
                      teacher: nn.Module | None = None) -> dict[str, float]:
    """Flow-matching MSE of ``denoiser`` on fixed held-out batches (``data_fm``) and, with a teacher, the MSE
    between their velocity predictions (``teacher_mse``)."""
    was_training = denoiser.training
    denoiser.eval()
    device = next(denoiser.parameters()).device
    data, distance = [], []
    for batch in batches:
        from neoc.train.loop import move_to_device

        batch = move_to_device(batch, device)
        context, mask, pooled = conditioning(batch.tokens)
        stages = len(batch.sample)
        rows = lambda x: x.repeat_interleave(stages, dim=0)  # noqa: E731
        pred = denoiser(batch.sample, rows(context), rows(mask), rows(pooled), batch.timesteps)
        data.append(torch.stack([F.mse_loss(p.float(), t) for p, t in zip(pred, batch.targets)]).mean())
        if teacher is not None:
            ref = teacher(batch.sample, rows(context), rows(mask), rows(pooled), batch.timesteps)
            distance.append(torch.stack([F.mse_loss(p.float(), r.float()) for p, r in zip(pred, ref)]).mean())
    denoiser.train(was_training)
    out = {"data_fm": float(torch.stack(data).mean())}
    if distance:
        out["teacher_mse"] = float(torch.stack(distance).mean())
    return out
