"""``replace-text-encoder``: DT5 + ContextAdapter distillation (Neodragon §3.1, Fig. 3, Eq. 10-11, Table 2).

The frozen teacher is the pipeline's T5-class encoder followed by the denoiser's ContextEmbedder (CE):
``t = CE(T5(prompt))`` are the context tokens the MMDiT attends to. The student is a small T5-class encoder (DT5,
:class:`~neoc.models.dt5.DT5Encoder`: a T5 encoder plus DistillT5's projection to the teacher's width) and, by
mode (paper Fig. 3; every mode keeps T5 and CE frozen):

* ``RM``   Replace-Mode:  ``t_hat = CA(DT5(p))``, the ContextAdapter replaces CE (the IR loses its CE node);
* ``EM``   Extend-Mode:   ``t_hat = CA(CE(DT5(p)))``, CE stays frozen, CA follows it;
* ``LORA`` LoRA-Mode:     ``t_hat = CE(DT5_lora(p))``, LoRA adapters on every linear layer of the frozen DT5
  play the CA's part (:mod:`neoc.models.lora`); after training they are merged into DT5's weights, so the
  deployed encoder has DT5's architecture and parameter count (the paper counts [LORA] like [TDT5]: 0.136B);
* ``TDT5`` Trainable-DT5: ``t_hat = CE(DT5(p))``, DT5 itself trains.

Loss (Eq. 10) on the context tokens, over *valid* tokens only: ``w_mse * MSE(t, t_hat) + w_cd * (1 - cos(t,
t_hat))`` (per-token cosine over channels; both terms averaged over the valid tokens of the batch; defaults
1.0 / 0.1). Adam, cosine decay ``lr -> lr_end`` (paper 3e-3 -> 3e-5, 24k iterations, batch 2048).

Choices made here (the paper leaves them open or relies on resources that are not available offline):

* **DT5 initialisation — a "DistilT5" stage.** The paper starts from DistillT5's pretrained DT5; no pretrained
  small T5 exists offline, and a frozen *random* DT5 would leave RM/EM/LORA nothing to adapt. So stage 1
  pretrains DT5 (``dt5_steps``) by feature regression on the teacher's own T5 hidden states (the same loss, before
  CE: DT5's projection outputs the teacher's width). Stage 2 (``steps``) trains the mode's student as above,
  starting from that DT5 in *every* mode; TDT5 differs only in that DT5 stays trainable, as in the paper. All
  modes therefore get the same budget. ``dt5_steps: 0`` skips stage 1 (a random DT5; sensible only for TDT5).
  Stage 1 does not depend on the mode, so its checkpoint folder is shared by the four modes of one work folder.
  DT5's token embeddings start as the teacher's table seen through its top-``d`` principal directions
  (``dt5_init: teacher-pca``; possible because both read the same token ids), the rest of DT5 at random.
* **CA start and size.** The CA (:class:`~neoc.models.context_adapter.ContextAdapter`: 3 residual MLP layers and
  a last MLP layer with a linear skip, hidden width ``max(in, out)``) starts as the function it stands in for
  (``adapter_init: embedder``): in RM its skip path is a copy of CE and its residual branches output zero, so the
  student starts exactly at ``CE(DT5(p))``; in EM it starts as the identity after CE. At real scale the RM CA
  (4096 -> 1536) has 0.130B parameters, DT5 + CA = 0.260B, the paper's numbers (Table 2, §1).
* **Tokenizer and masks.** The pipeline graph feeds one token tensor (``t5_ids``/``t5_mask``) to whatever encoder
  fills the ``text_encoder`` role, so the student reads the teacher's token ids, as DistillT5's training does;
  the loss is then computed on the teacher's token positions where ``t5_mask`` is 1 (padding excluded). A
  student with its own vocabulary would need its own graph input and a token alignment; neither exists yet.
  For training speed every batch is cut to its longest valid prompt (T5's relative position bias and the
  padding mask make the valid tokens' outputs independent of the number of pad tokens), and for small teachers
  ``teacher_cache`` computes the teacher's T5 states of every training prompt once instead of every step.
* **Data: prompts only.** Toy-world captions (``ToyWorldDataset`` train split) and the real prompt corpus's
  train split (``neoc.data.prompts``), mixed by ``toy_fraction``, plus the pipeline's negative prompt
  (``negative_fraction`` of the rows: the unconditional CFG branch reads its context tokens too). Positive
  prompts get the pipeline's prompt suffix, as the sampler adds it. Any training prompt whose normalised text is
  an evaluation prompt is dropped.
* **Evaluation.** ``cosine_similarity`` and ``mse`` compare the new pipeline's context tokens with the teacher's
  on ``eval.prompts`` when the recipe gives them, else on held-out prompts (toy eval-split captions — the same
  ones the quality instrument generates from — and the real corpus's eval split): token-weighted means over
  valid tokens. The held-out sets are measured (and kept out of training) in both cases, and reported per set
  under ``eval_sets``. On a trained ``builtin:pyramid-tiny`` pipeline the toy-world quality is measured before/after
  with the same prompts and seeds.

Runs in one process or under ``torchrun`` (DDP, via :mod:`neoc.train`): every rank trains on its own prompts,
checkpoints (``checkpoint_every``) go to the pass's artifact folder and an interrupted pass resumes from them.
``python -m neoc.passes.replace_text_encoder --help`` runs this pass alone, e.g. on a GPU cluster::

    torchrun --nproc_per_node 4 -m neoc.passes.replace_text_encoder --model SRC --out DIR --set mode=RM
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m`: run the module under its package name, so the pass registers once
    import sys

    from neoc.passes.replace_text_encoder import main

    sys.exit(main())

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Literal

import attrs
import torch
from torch import nn

from neoc.config import config_to_dict, in_range
from neoc.errors import CheckFailed, InputError
from neoc.pass_api import Pass, PassContext, PassResult
from neoc.registry import register_pass
from neoc.eval.pipeline_quality import quality_skip_reason

REAL_SCALE_WIDTH = 4096  # a teacher this wide gets the T5 v1.1-base-class DT5 (DistillT5 shape)
TEXT_SIDE_ROLES = ("text_encoder", "context_embedder", "context_adapter")
# settings that do not change what is trained (left out of the checkpoint folder names, so runs that differ only
# in them share their training: e.g. `neoc run` and bench/text_encoder_modes.py on one --train-dir)
NOT_TRAINING_KEYS = ("quality_videos", "checkpoint_every", "eval_prompts")


def _help(text: str) -> dict:
    return {"help": text}


@attrs.frozen
class ReplaceTextEncoderConfig:
    mode: Literal["RM", "EM", "LORA", "TDT5"] = attrs.field(
        default="RM", metadata=_help("RM: CA replaces CE; EM: CE then CA; LORA: LoRA on DT5; TDT5: DT5 trains"))
    steps: int = attrs.field(default=24000, validator=in_range(1),
                             metadata=_help("stage-2 optimizer steps (CA / LoRA / DT5); paper 24k"))
    dt5_steps: int = attrs.field(default=24000, validator=in_range(0),
                                 metadata=_help("stage-1 'DistilT5' steps: DT5 regresses the teacher's T5 states"))
    batch_size: int = attrs.field(default=512, validator=in_range(1),
                                  metadata=_help("prompts per process and step (paper 512 x 4 GPUs)"))
    lr: float = attrs.field(default=3e-3, validator=in_range(0.0), metadata=_help("Adam LR at step 0"))
    lr_end: float = attrs.field(default=3e-5, validator=in_range(0.0), metadata=_help("LR after cosine decay"))
    w_mse: float = attrs.field(default=1.0, validator=in_range(0.0), metadata=_help("MSE weight (Eq. 10)"))
    w_cd: float = attrs.field(default=0.1, validator=in_range(0.0), metadata=_help("cosine-distance weight"))
    adapter_layers: int = attrs.field(default=4, validator=in_range(1), metadata=_help("ContextAdapter layers"))
    lora_rank: int = attrs.field(default=8, validator=in_range(1), metadata=_help("LORA mode: adapter rank"))
    lora_alpha: float = attrs.field(default=16.0, validator=in_range(0.0),
                                    metadata=_help("LORA mode: scale alpha (update = alpha / rank * B A)"))
    student: Literal["auto", "dt5-base", "tiny"] = attrs.field(
        default="auto", metadata=_help("DT5 shape: T5 v1.1-base for 4096-wide teachers, else the tiny DT5"))
    toy_fraction: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0),
                                      metadata=_help("share of toy-world captions among training prompts"))
    negative_fraction: float = attrs.field(default=0.05, validator=in_range(0.0, 1.0),
                                           metadata=_help("share of rows holding the pipeline's negative prompt"))
    toy_pool: int = attrs.field(default=8192, validator=in_range(1),
                                metadata=_help("toy-world training captions drawn once"))
    eval_prompts: int = attrs.field(default=256, validator=in_range(1),
                                    metadata=_help("held-out prompts per set when eval.prompts is not given"))
    checkpoint_every: int = attrs.field(default=500, validator=in_range(0),
                                        metadata=_help("training checkpoint interval in steps (0: only at the end)"))
    teacher_cache: bool = attrs.field(
        default=False, metadata=_help("compute the teacher's T5 states of every training prompt once (small models)"))
    adapter_init: Literal["embedder", "random"] = attrs.field(
        default="embedder", metadata=_help("CA starts as the teacher's CE (RM) / the identity (EM); random: small MLP"))
    dt5_init: Literal["teacher-pca", "random"] = attrs.field(
        default="teacher-pca", metadata=_help("DT5 token embeddings: the teacher's, in its top principal directions"))
    quality_videos: int = attrs.field(default=4, validator=in_range(0),
                                      metadata=_help("toy-quality videos before/after (trained pyramid-tiny only)"))


def student_t5_config(teacher_width: int, choice: str) -> dict:
    """DT5 encoder config: T5 v1.1-base for real-scale teachers, the tiny DT5 for the embedded default."""
    from neoc.zoo import text_configs as tc

    if choice == "dt5-base" or (choice == "auto" and teacher_width >= REAL_SCALE_WIDTH):
        return dict(tc.DT5_BASE_CONFIG)
    return dict(tc.TINY_DT5_CONFIG)


def _context_width(pipeline) -> int:
    """Width of the denoiser's context tokens (the CE's output; the denoiser's inner width otherwise)."""
    if pipeline.has("context_embedder") and hasattr(pipeline.component("context_embedder"), "out_features"):
        return pipeline.component("context_embedder").out_features
    return pipeline.component("denoiser").inner_dim


def build_dt5(pipeline, config: ReplaceTextEncoderConfig, device: str | None = None):
    """A fresh DT5 whose projection outputs the teacher's width (so CE keeps its input width)."""
    from neoc.zoo.components import build_dt5 as build

    teacher_width = pipeline.component("text_encoder").hidden_size
    return build({"t5": student_t5_config(teacher_width, config.student), "out_dim": teacher_width}, device=device)


@torch.no_grad()
def init_embeddings_from_teacher(dt5, teacher_encoder) -> bool:
    """DT5's token embedding table <- the teacher's, expressed in its top-``d`` principal directions.

    ``E_dt5 = E_t5 V_d`` with ``V_d`` [D, d] the leading right singular vectors of the teacher's table [V, D], so
    the student starts with the best rank-d linear view of the teacher's token vectors (most of what a T5 output
    token carries is its own embedding, through the residual stream) instead of having to find one for every
    rare token. Rescaled to the teacher's per-entry spread. Needs the shared vocabulary (False otherwise).
    """
    teacher_embeddings = getattr(getattr(teacher_encoder, "t5", None), "get_input_embeddings", None)
    if teacher_embeddings is None:
        return False
    source = teacher_embeddings().weight  # [V, D]
    target = dt5.encoder.t5.get_input_embeddings().weight  # [V, d]
    if source.shape[0] != target.shape[0] or target.shape[1] > source.shape[1]:
        return False
    _, _, directions = torch.svd_lowrank(source.float(), q=target.shape[1], niter=4)  # [D, d]
    coordinates = source.float() @ directions  # [V, d]
    coordinates *= source.float().std() / coordinates.std().clamp_min(1e-12)
    target.copy_(coordinates.to(target.dtype))
    return True


def build_adapter(pipeline, config: ReplaceTextEncoderConfig, device: str | None = None):
    """The mode's ContextAdapter (None for LORA / TDT5): RM maps teacher width -> context width, EM is square."""
    from neoc.models.context_adapter import ContextAdapter
    from neoc.zoo.components import _build_on

    width = _context_width(pipeline)
    if config.mode == "RM":
        in_dim = pipeline.component("text_encoder").hidden_size
    elif config.mode == "EM":
        in_dim = width
    else:
        return None
    return _build_on(device, lambda: ContextAdapter(in_dim, width, config.adapter_layers))


def build_students(pipeline, config: ReplaceTextEncoderConfig, device: str | None = None) -> dict:
    """The student components for ``config.mode``: ``{role: module or None}`` (None removes the role).

    RM: DT5 -> CA (CA replaces CE). EM: DT5 -> CE -> CA. TDT5 / LORA: DT5 -> CE (DT5 trained, or LoRA on DT5,
    merged after training). DT5 projects to the teacher's width, so CE keeps its input width.
    """
    students = {"text_encoder": build_dt5(pipeline, config, device)}
    adapter = build_adapter(pipeline, config, device)
    if config.mode == "RM":
        students.update(context_embedder=None, context_adapter=adapter)
    elif config.mode == "EM":
        students["context_adapter"] = adapter
    return students


# ---- the text side as one module -----------------------------------------------------------------------------
class TextSide(nn.Module):
    """Token ids -> context tokens, chained as the pipeline graph does: encoder -> [embedder] -> [adapter]."""

    def __init__(self, encoder: nn.Module, embedder: nn.Module | None = None, adapter: nn.Module | None = None):
        super().__init__()
        self.encoder, self.embedder, self.adapter = encoder, embedder, adapter

    @classmethod
    def of(cls, pipeline) -> "TextSide":
        get = lambda role: pipeline.component(role) if pipeline.has(role) else None  # noqa: E731
        return cls(pipeline.component("text_encoder"), get("context_embedder"), get("context_adapter"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids, attention_mask)  # [B, L, encoder width]
        if self.embedder is not None:
            tokens = self.embedder(tokens)  # [B, L, context width]
        if self.adapter is not None:
            tokens = self.adapter(tokens, attention_mask)  # [B, L, context width]
        return tokens


def text_side_params(pipeline) -> int:
    from neoc.ir.pipeline import count_params

    return sum(count_params(pipeline.component(r)) for r in TEXT_SIDE_ROLES if pipeline.has(r))


# ---- loss and agreement --------------------------------------------------------------------------------------
def distillation_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, w_mse: float,
                      w_cd: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 10 over the valid tokens: ``w_mse * mean((t - t_hat)^2) + w_cd * mean(1 - cos(t, t_hat))``.

    predicted, target: [B, L, D]; mask: [B, L], 1 = valid token. MSE averages over valid tokens and channels, the
    cosine is per token (over channels) and averages over valid tokens.
    """
    valid = mask.bool()
    pred, ref = predicted[valid].float(), target[valid].float()  # [N, D]
    mse = (pred - ref).pow(2).mean()
    cosine = nn.functional.cosine_similarity(pred, ref, dim=-1, eps=1e-8).mean()
    loss = w_mse * mse + w_cd * (1.0 - cosine)
    return loss, {"mse": mse.detach(), "cosine": cosine.detach()}


@torch.no_grad()
def context_agreement(teacher: nn.Module, student: nn.Module, tokenize, prompts: list[str],
                      batch_size: int = 64) -> dict[str, float]:
    """Student vs teacher context tokens on ``prompts``: token-weighted mean cosine and MSE over valid tokens."""
    device = next(teacher.parameters()).device
    cos_sum, sq_sum, tokens, width = 0.0, 0.0, 0, 1
    for start in range(0, len(prompts), batch_size):
        ids, mask = tokenize(prompts[start:start + batch_size])
        ids, mask = ids.to(device), mask.to(device)
        valid = mask.bool()
        ref = teacher(ids, mask)[valid].double()  # [N, D]
        pred = student(ids, mask)[valid].double()
        cos_sum += float(nn.functional.cosine_similarity(pred, ref, dim=-1, eps=1e-12).sum())
        sq_sum += float((pred - ref).pow(2).sum())
        tokens += int(valid.sum())
        width = ref.shape[-1]
    if tokens == 0:
        raise InputError("replace-text-encoder: the evaluation prompts hold no valid tokens")
    return {"cosine_similarity": cos_sum / tokens, "mse": sq_sum / (tokens * width), "tokens": tokens,
            "prompts": len(prompts)}


# ---- data ------------------------------------------------------------------------------------------------------
class PromptTokenizer:
    """Prompts -> (t5_ids, t5_mask) as the pipeline's sampler builds them (prompt suffix on positive prompts)."""

    def __init__(self, prompt_encoder):
        self.tokenizer = prompt_encoder.t5_tokenizer
        self.suffix = prompt_encoder.prompt_suffix

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer([p + self.suffix for p in prompts])  # [B, L] each

    def rows(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Already-final texts (suffix added or, for the negative prompt, not)."""
        return self.tokenizer(texts)


@attrs.define
class TrainingPrompts:
    """The prompt pools and how a batch mixes them (all randomness from the caller's generator)."""

    toy: list[str]
    real: list[str]
    negative: str
    suffix: str
    toy_fraction: float
    negative_fraction: float

    def sample(self, count: int, generator: torch.Generator) -> list[str]:
        draws = torch.rand(count, 2, generator=generator)
        texts = []
        for negative_draw, toy_draw in draws.tolist():
            if negative_draw < self.negative_fraction:
                texts.append(self.negative)
                continue
            pool = self.toy if (toy_draw < self.toy_fraction or not self.real) and self.toy else self.real
            index = int(torch.randint(len(pool), (1,), generator=generator))
            texts.append(pool[index] + self.suffix)
        return texts

    def sizes(self) -> dict[str, int]:
        return {"toy": len(self.toy), "real": len(self.real)}

    def all_texts(self) -> list[str]:
        """Every text :meth:`sample` can return, once each."""
        texts = [p + self.suffix for p in self.toy + self.real] + [self.negative]
        return list(dict.fromkeys(texts))


def held_out_prompts(ctx: PassContext, config: ReplaceTextEncoderConfig) -> dict[str, list[str]]:
    """Evaluation sets, none of them trained on: ``eval.prompts`` when given (the headline numbers), and always
    toy eval-split captions + the real corpus's eval split (reported beside it, headline when no file is given)."""
    from neoc.data.prompts import load_prompt_corpus, read_prompts, split_prompts
    from neoc.data.toyworld import ToyWorldDataset

    sets = {}
    if ctx.eval.prompts is not None:
        sets["eval.prompts"] = read_prompts(ctx.eval.prompts)
    toy = ToyWorldDataset("eval", config.eval_prompts, ctx.seed)
    sets["toy_eval"] = split_prompts([toy.scene_and_caption(i)[1] for i in range(len(toy))], "all")
    try:
        sets["real_eval"] = load_prompt_corpus(None, "eval")[:config.eval_prompts]
    except InputError as exc:
        ctx.log.warning("replace-text-encoder: no real prompt corpus (%s); evaluating on toy captions only", exc)
    return sets


def training_prompts(ctx: PassContext, config: ReplaceTextEncoderConfig, pipeline,
                     excluded: set[str]) -> TrainingPrompts:
    """Toy train-split captions + the real corpus's train split, minus every (normalised) evaluation prompt."""
    from neoc.data.prompts import load_prompt_corpus, normalise_prompt, split_prompts
    from neoc.data.toyworld import ToyWorldDataset

    toy_data = ToyWorldDataset("train", config.toy_pool, ctx.seed)
    toy = split_prompts([toy_data.scene_and_caption(i)[1] for i in range(len(toy_data))], "all")
    try:
        real = load_prompt_corpus(None, "train")
    except InputError as exc:
        ctx.log.warning("replace-text-encoder: no real prompt corpus (%s); training on toy captions only", exc)
        real = []
    keep = lambda prompts: [p for p in prompts if normalise_prompt(p) not in excluded]  # noqa: E731
    # the sampler's negative prompt is the spec's (Pipeline.prepare_inputs); the suffix is the prompt encoder's
    pools = TrainingPrompts(keep(toy), keep(real), pipeline.spec.negative_prompt,
                            pipeline.prompt_encoder.prompt_suffix, config.toy_fraction, config.negative_fraction)
    if not pools.toy and not pools.real:
        raise InputError("replace-text-encoder: no training prompts left after removing the evaluation prompts")
    return pools


def _teacher_autocast(device: torch.device):
    """bf16 for the frozen teacher on a CUDA device that supports it (T5 is bf16-safe); fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class TeacherStates:
    """The frozen teacher encoder's hidden states for every training text, computed once (``teacher_cache``).

    Computed on first use (a resumed run whose stages are finished never pays for it), on the device the batch
    asks for, and kept on the CPU. Memory: texts x L x D floats (the tiny pipeline: ~7k x 32 x 192 x 4 B = 170 MB),
    so for small teachers only.
    """

    def __init__(self, encoder: nn.Module, tokenizer: PromptTokenizer, texts: list[str], log=None,
                 batch_size: int = 128):
        self.encoder, self.tokenizer, self.texts, self.log, self.batch_size = encoder, tokenizer, texts, log, batch_size
        self.row = {text: index for index, text in enumerate(texts)}
        self.ids = self.mask = self.states = None

    _last: "tuple[str, TeacherStates] | None" = None  # one per process: modes run one after another share it

    @classmethod
    def shared(cls, encoder: nn.Module, tokenizer: PromptTokenizer, texts: list[str], log, teacher_hash: str):
        """The process's cached states when the same teacher (weights hash) and texts ask again, else a new cache.

        Several passes in one process (the four modes of ``bench/text_encoder_modes.py``) then encode the
        training prompts once; only the latest cache is kept.
        """
        key = _fingerprint(teacher_hash, texts)
        if cls._last is not None and cls._last[0] == key:
            cached = cls._last[1]
            cached.encoder, cached.log = encoder, log
            return cached
        cache = cls(encoder, tokenizer, texts, log)
        cls._last = (key, cache)
        return cache

    @torch.no_grad()
    def _compute(self, device: torch.device) -> None:
        start = time.perf_counter()
        self.ids, self.mask = self.tokenizer.rows(self.texts)  # [P, L] each
        self.encoder.eval()
        chunks = []
        with _teacher_autocast(device):
            for first in range(0, len(self.texts), self.batch_size):
                ids = self.ids[first:first + self.batch_size].to(device)
                mask = self.mask[first:first + self.batch_size].to(device)
                chunks.append(self.encoder(ids, mask).float().cpu())  # [b, L, D]
        self.states = torch.cat(chunks)  # [P, L, D]
        if self.log is not None:
            self.log.info("replace-text-encoder: cached the teacher's states of %d prompts (%.1f s)",
                          len(self.texts), time.perf_counter() - start)

    def lookup(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.states is None:
            self._compute(device)
        rows = torch.tensor([self.row[text] for text in texts])
        return self.ids[rows], self.mask[rows], self.states[rows]


class PromptBatches:
    """``batch_fn`` for :class:`neoc.train.loop.Trainer`: prompts -> tokens -> the frozen teacher's targets.

    Target = ``head(encoder(tokens))``: stage 1 has no head (T5 states), stage 2's head is the frozen CE. The
    teacher runs here, outside the trained objective, so checkpoints hold only the student. With ``cache`` the
    encoder's states are looked up instead of recomputed.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module | None, tokenizer: PromptTokenizer,
                 prompts: TrainingPrompts, batch_size: int, cache: TeacherStates | None = None):
        self.encoder, self.head, self.tokenizer = encoder, head, tokenizer
        self.prompts, self.batch_size, self.cache = prompts, batch_size, cache

    @torch.no_grad()
    def __call__(self, ctx) -> dict[str, torch.Tensor]:
        texts = self.prompts.sample(self.batch_size, ctx.generator)
        states = None
        if self.cache is not None:
            ids, mask, states = self.cache.lookup(texts, ctx.device)  # [B, L], [B, L], [B, L, D]
        else:
            ids, mask = self.tokenizer.rows(texts)  # [B, L]
        length = max(1, int(mask.sum(1).max()))  # cut to the longest valid prompt of the batch
        ids, mask = ids[:, :length].to(ctx.device), mask[:, :length].to(ctx.device)
        with _teacher_autocast(ctx.device):
            if states is None:
                self.encoder.eval()
                states = self.encoder(ids, mask)  # [B, length, D]
            else:
                states = states[:, :length].to(ctx.device)
            target = self.head(states) if self.head is not None else states  # [B, length, D_target]
        return {"ids": ids, "mask": mask, "target": target.float()}


class ContextDistillation(nn.Module):
    """The trained objective: student text side vs teacher targets (Eq. 10); frozen parts stay in eval mode."""

    def __init__(self, student: TextSide, w_mse: float, w_cd: float, frozen: list[nn.Module]):
        super().__init__()
        self.student = student
        self.w_mse, self.w_cd = w_mse, w_cd
        self._frozen = frozen  # plain list: not registered twice

    def train(self, mode: bool = True) -> "ContextDistillation":
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]):
        predicted = self.student(batch["ids"], batch["mask"])  # [B, L, D]
        return distillation_loss(predicted, batch["target"], batch["mask"], self.w_mse, self.w_cd)


def _freeze(module: nn.Module | None) -> None:
    if module is not None:
        module.requires_grad_(False)
        module.eval()


def train_stage(name: str, student: TextSide, trainable: list[nn.Parameter], frozen: list[nn.Module],
                batches: PromptBatches, steps: int, config: ReplaceTextEncoderConfig, out_dir: Path, seed: int,
                quiet: bool):
    """Adam + cosine decay (lr -> lr_end) through the shared trainer; checkpoints and resumes in ``out_dir``."""
    from neoc.train.loop import TrainConfig, Trainer, warmup_cosine

    objective = ContextDistillation(student, config.w_mse, config.w_cd, frozen)
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    end_ratio = config.lr_end / config.lr if config.lr > 0 else 1.0
    train_config = TrainConfig(steps=steps, out_dir=out_dir, seed=seed, checkpoint_every=config.checkpoint_every,
                               log_every=max(1, min(50, steps // 10)), name=name,
                               progress=False if quiet else None)
    trainer = Trainer(objective, optimizer, warmup_cosine(0, steps, end_ratio), train_config)
    return trainer.fit(batches)


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _module_hash(module: nn.Module | None) -> str:
    from neoc.ir.runfolder import state_hash

    return "none" if module is None else state_hash(module.state_dict())


def _seeded(seed: int, factory):
    """Build modules with a seeded global RNG without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _ranks_agree(modules: list[nn.Module]) -> bool:
    """True when every rank holds the same weights (always true in one process)."""
    from neoc.train import distributed as dist_utils

    if not dist_utils.is_initialized():
        return True
    import torch.distributed as dist

    checksum = torch.tensor([sum(float(p.detach().double().abs().sum() + p.detach().double().sum())
                                 for m in modules for p in m.parameters())], dtype=torch.float64)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return all(bool(torch.equal(g, checksum)) for g in gathered)


def _quality(pipeline, num: int, seed: int, quiet: bool) -> dict:
    from neoc.eval.pipeline_quality import evaluate_pipeline

    result = evaluate_pipeline(pipeline, num=num, seed=seed, quiet=quiet)
    return {k: v for k, v in result.items() if not k.startswith("_")}


# ---- the two training stages ------------------------------------------------------------------------------------
@attrs.define
class DistillationData:
    """Everything both stages read: tokenizer, training prompt pools, held-out sets, the optional teacher cache."""

    tokenize: PromptTokenizer
    prompts: TrainingPrompts
    eval_sets: dict[str, list[str]]
    cache: "TeacherStates | None"
    key: list  # what the training data depends on (part of the checkpoint folder names)

    @classmethod
    def prepare(cls, pipeline, ctx: PassContext, cfg: ReplaceTextEncoderConfig) -> "DistillationData":
        from neoc.data.prompts import normalise_prompt

        tokenize = PromptTokenizer(pipeline.prompt_encoder)
        eval_sets = held_out_prompts(ctx, cfg)
        excluded = {normalise_prompt(p) for prompts in eval_sets.values() for p in prompts}
        prompts = training_prompts(ctx, cfg, pipeline, excluded)
        teacher_hash = [_module_hash(pipeline.component(r)) for r in ("text_encoder", "context_embedder")]
        cache = None
        if cfg.teacher_cache:
            cache = TeacherStates.shared(pipeline.component("text_encoder"), tokenize, prompts.all_texts(), ctx.log,
                                         teacher_hash[0])
        key = [teacher_hash, cfg.dt5_init, cfg.student, cfg.teacher_cache, cfg.batch_size, cfg.toy_fraction,
               cfg.negative_fraction, cfg.toy_pool, cfg.lr, cfg.lr_end, cfg.w_mse, cfg.w_cd, sorted(excluded),
               ctx.seed]
        return cls(tokenize, prompts, eval_sets, cache, key)


def distil_t5(pipeline, teacher: TextSide, data: DistillationData, cfg: ReplaceTextEncoderConfig,
              ctx: PassContext) -> tuple[nn.Module, dict]:
    """Stage 1, "DistilT5": a fresh DT5 (teacher-PCA token embeddings) regresses the teacher's T5 states.

    Mode-independent: its checkpoint folder is named by the data and settings only, so modes sharing a work folder
    train it once. ``dt5_steps: 0`` returns the untrained DT5.
    """
    dt5 = _seeded(ctx.seed, lambda: build_dt5(pipeline, cfg))
    if cfg.dt5_init == "teacher-pca" and not _seeded(ctx.seed, lambda: init_embeddings_from_teacher(
            dt5, teacher.encoder)):
        ctx.log.warning("replace-text-encoder: vocabularies differ; DT5 keeps its random token embeddings")
    if cfg.dt5_steps == 0:
        return dt5, {}
    stage_dir = ctx.work_dir / "train" / f"dt5-{_fingerprint(data.key, cfg.dt5_steps)}"
    ctx.log.info("replace-text-encoder: stage 1 (DistilT5), %d steps -> %s", cfg.dt5_steps, stage_dir)
    batches = PromptBatches(teacher.encoder, None, data.tokenize, data.prompts, cfg.batch_size, data.cache)
    result = train_stage("distil_t5", TextSide(dt5), list(dt5.parameters()), [], batches, cfg.dt5_steps, cfg,
                         stage_dir, ctx.seed, ctx.quiet)
    return dt5, {"distil_t5": _stage_record(result, list(dt5.parameters()))}


def distil_context(pipeline, teacher: TextSide, dt5: nn.Module, data: DistillationData,
                   cfg: ReplaceTextEncoderConfig, ctx: PassContext) -> tuple[TextSide, dict]:
    """Stage 2: the mode's student text side learns the teacher's context tokens ``CE(T5(p))`` (Eq. 10-11).

    RM/EM train the CA on the frozen DT5; LORA trains LoRA adapters on the frozen DT5 (merged afterwards);
    TDT5 trains DT5 itself. CE stays frozen wherever the student uses it.
    """
    from neoc.models.lora import add_lora, lora_parameters, merge_lora

    embedder = teacher.embedder
    adapter = _seeded(ctx.seed + 1, lambda: build_adapter(pipeline, cfg))
    if adapter is not None and cfg.adapter_init == "embedder":
        start_adapter(adapter, embedder if cfg.mode == "RM" else None, ctx)
    frozen: list[nn.Module] = [embedder]
    if cfg.mode == "TDT5":
        trainable = list(dt5.parameters())
    else:
        _freeze(dt5)
        frozen.append(dt5)
        if cfg.mode == "LORA":
            _seeded(ctx.seed + 1, lambda: add_lora(dt5, cfg.lora_rank, cfg.lora_alpha))
            trainable = list(lora_parameters(dt5))
        else:
            trainable = list(adapter.parameters())
    student = TextSide(dt5, None if cfg.mode == "RM" else embedder, adapter)
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in NOT_TRAINING_KEYS}
    stage_dir = ctx.work_dir / "train" / f"{cfg.mode}-{_fingerprint(data.key, settings)}"
    ctx.log.info("replace-text-encoder: stage 2 (%s), %d steps -> %s", cfg.mode, cfg.steps, stage_dir)
    batches = PromptBatches(teacher.encoder, embedder, data.tokenize, data.prompts, cfg.batch_size, data.cache)
    result = train_stage(f"context_{cfg.mode}", student, trainable, frozen, batches, cfg.steps, cfg, stage_dir,
                         ctx.seed + 1, ctx.quiet)
    record = _stage_record(result, trainable)
    if cfg.mode == "LORA":
        merge_lora(dt5)
    student.eval()
    return student, record


def start_adapter(adapter, embedder: nn.Module | None, ctx: PassContext) -> None:
    """``adapter_init: embedder``: RM's CA starts as the CE it replaces, EM's as the identity after CE.

    The student then starts as ``CE(DT5(p))`` (stage 1's DT5 under the teacher's own head) and only learns the
    correction; a CA whose skip cannot hold CE (equal widths, or a CE that is not one linear layer) keeps its
    small random start.
    """
    try:
        if embedder is not None and not isinstance(embedder, nn.Linear):
            raise ValueError(f"the context_embedder is a {type(embedder).__name__}, not one linear layer")
        adapter.start_as(embedder)
    except ValueError as exc:
        ctx.log.warning("replace-text-encoder: %s; the ContextAdapter keeps its random start", exc)


def install_student(pipeline, student: TextSide, mode: str) -> None:
    """Rewrite the IR: DT5 becomes the text_encoder; RM removes the CE node; RM/EM add the context_adapter."""
    pipeline.replace_component("text_encoder", student.encoder)
    if mode == "RM":
        pipeline.replace_component("context_embedder", None)
    if student.adapter is not None:
        pipeline.replace_component("context_adapter", student.adapter)
    for role in TEXT_SIDE_ROLES:  # hand the components back as a loaded pipeline has them: trainable, eval
        if pipeline.has(role):
            pipeline.component(role).requires_grad_(True).eval()


# ---- the pass -------------------------------------------------------------------------------------------------
@register_pass
class ReplaceTextEncoder(Pass):
    name = "replace-text-encoder"
    summary = "Distil the T5-class encoder + context embedder into a small DT5 + ContextAdapter (prompts only)"
    paper = "Neodragon §3.1"
    Config = ReplaceTextEncoderConfig
    implemented = True

    def analyze(self, pipeline) -> None:
        for role, module in build_students(pipeline, self.config, device="meta").items():
            pipeline.replace_component(role, module)

    def check_preconditions(self, pipeline, ctx: PassContext) -> None:
        if pipeline.prompt_encoder is None:
            raise CheckFailed("replace-text-encoder: the pipeline has no tokenizers; it needs prompts -> tokens")
        if not hasattr(pipeline.component("text_encoder"), "hidden_size"):
            raise CheckFailed("replace-text-encoder: the text_encoder does not expose its hidden_size")
        if not pipeline.has("context_embedder"):
            raise CheckFailed("replace-text-encoder: no context_embedder; the teacher's tokens are CE(T5(prompt))")
        if pipeline.has("context_adapter"):
            raise CheckFailed("replace-text-encoder: the pipeline already has a context_adapter (ran twice?)")

    def run(self, pipeline, ctx: PassContext) -> PassResult:
        from neoc.train import distributed as dist_utils

        cfg, info = self.config, dist_utils.init_distributed()
        teacher = TextSide(pipeline.component("text_encoder"), pipeline.component("context_embedder"))
        _freeze(teacher)
        home = next(teacher.parameters()).device
        params_before = text_side_params(pipeline)
        data = DistillationData.prepare(pipeline, ctx, cfg)

        quality_reason = quality_skip_reason(pipeline, cfg.quality_videos)
        quality_before = self._quality_before(pipeline, ctx) if quality_reason is None and info.is_main else None

        teacher.to(info.device)
        dt5, stages = distil_t5(pipeline, teacher, data, cfg, ctx)
        student, stage = distil_context(pipeline, teacher, dt5, data, cfg, ctx)
        stages[f"context_{cfg.mode}"] = stage
        if not _ranks_agree([student]):
            raise CheckFailed("replace-text-encoder: ranks ended with different student weights")

        # held-out prompts, never trained on
        agreement = {name: context_agreement(teacher, student, data.tokenize, texts)
                     for name, texts in data.eval_sets.items()}
        headline = ["eval.prompts"] if "eval.prompts" in agreement else list(agreement)
        overall = _pool_agreement(agreement[name] for name in headline)
        teacher.to(home)
        student.to(home)
        install_student(pipeline, student, cfg.mode)

        metrics = {"mode": cfg.mode, "params_before": params_before, "params_after": text_side_params(pipeline),
                   "cosine_similarity": overall["cosine_similarity"], "mse": overall["mse"],
                   "evaluated_on": headline, "eval_sets": agreement, "train_prompts": data.prompts.sizes(), "train": stages,
                   "world_size": info.world_size,
                   "student_t5": {k: student_t5_config(teacher.encoder.hidden_size, cfg.student)[k]
                                  for k in ("d_model", "d_ff", "num_layers", "num_heads")}}
        if cfg.mode == "LORA":
            metrics["lora_trainable_params"] = stage["trainable_params"]
        if quality_reason is not None:
            metrics["quality_note"] = f"skipped: {quality_reason}"
        elif info.is_main:
            after = _quality(pipeline, quality_before["num_videos"], quality_before["seed"], ctx.quiet)
            metrics.update(quality_before=quality_before, quality_after=after,
                           quality_total_drop=quality_before["total"] - after["total"])
        artifacts = self._write_student(pipeline, ctx) if info.is_main else {}
        dist_utils.barrier()
        return PassResult(pipeline, modified=True, metrics=metrics, artifacts=artifacts)

    def _quality_before(self, pipeline, ctx: PassContext) -> dict:
        """The runner's baseline when this pass sees the unmodified model (same prompts and seeds), else measured."""
        baseline = ctx.extras.get("quality_baseline")
        if not ctx.previous and baseline and "num_videos" in baseline and "seed" in baseline:
            return dict(baseline)
        return _quality(pipeline, self.config.quality_videos, ctx.seed, ctx.quiet)

    def check_postconditions(self, pipeline, result: PassResult, ctx: PassContext) -> None:
        if self.config.mode == "RM" and pipeline.has("context_embedder"):
            raise CheckFailed("replace-text-encoder RM: the context_embedder is still in the pipeline")
        if self.config.mode in ("RM", "EM") and not pipeline.has("context_adapter"):
            raise CheckFailed(f"replace-text-encoder {self.config.mode}: no context_adapter in the pipeline")
        cosine = result.metrics.get("cosine_similarity")
        if cosine is None or not math.isfinite(cosine):
            raise CheckFailed(f"replace-text-encoder: non-finite cosine similarity {cosine!r}")

    @staticmethod
    def _write_student(pipeline, ctx: PassContext) -> dict[str, str]:
        """The student's components as one role-prefixed safetensors file + a JSON of their builders."""
        from safetensors.torch import save_file

        from neoc.ir.components import describe_component

        tensors, manifest = {}, {"components": {}, "removed": []}
        for role in TEXT_SIDE_ROLES:
            if not pipeline.has(role):
                manifest["removed"].append(role)
                continue
            module = pipeline.component(role)
            builder, config = describe_component(module)
            manifest["components"][role] = {"builder": builder, "config": config}
            for key, value in module.state_dict().items():
                tensors[f"{role}.{key}"] = value.detach().cpu().contiguous().clone()
        weights, description = ctx.artifact("student.safetensors"), ctx.artifact("student.json")
        save_file(tensors, str(weights))
        description.write_text(json.dumps(manifest, indent=2))
        return {"student": str(weights), "student_manifest": str(description)}


def _stage_record(result, trainable: list[nn.Parameter]) -> dict:
    return {"steps": result.steps, "resumed_from": result.resumed_from, "seconds": round(result.wall_seconds, 2),
            "final_loss": result.final_loss, "trainable_params": sum(p.numel() for p in trainable),
            "checkpoint": result.checkpoint}


def _pool_agreement(results) -> dict[str, float]:
    """Token-weighted mean of several :func:`context_agreement` results."""
    results = list(results)
    tokens = sum(r["tokens"] for r in results)
    return {"cosine_similarity": sum(r["cosine_similarity"] * r["tokens"] for r in results) / tokens,
            "mse": sum(r["mse"] * r["tokens"] for r in results) / tokens}


# ---- standalone entry point (one process or torchrun) ---------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run this pass alone on a model source; rank 0 writes ``OUT/pipeline`` and ``OUT/metrics.json``."""
    from neoc.pass_main import standalone_main

    return standalone_main(ReplaceTextEncoder, ReplaceTextEncoderConfig, "neoc.passes.replace_text_encoder", ('mode', 'params_before', 'params_after', 'cosine_similarity', 'mse', 'world_size'), argv, eval_option="prompts", seed_before_load=True)
