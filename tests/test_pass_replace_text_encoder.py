"""replace-text-encoder (Neodragon §3.1): loss, agreement metric, LoRA, the four IR rewrites, resume, torchrun.

Every pass run here uses a randomly initialised builtin:pyramid-tiny and a handful of steps; the measured
numbers (cosine >= 0.9, quality, the four-mode table) come from bench/text_encoder_modes.py on trained weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from neoc.errors import CheckFailed
from neoc.models.dt5 import DT5Encoder
from neoc.models.lora import LoRALinear, add_lora, lora_parameters, merge_lora
from neoc.pass_api import PassContext
from neoc.passes import replace_text_encoder as rte


def _real_prompt_sets() -> set[str]:
    """The pass also scores the real prompt corpus's eval split when the shared data is there (a fresh clone on
    another machine may not have ../shared/data)."""
    from neoc.data.prompts import load_prompt_corpus
    from neoc.errors import InputError

    try:
        load_prompt_corpus(None, "eval")
    except InputError:
        return set()
    return {"real_eval"}


REAL_SETS = _real_prompt_sets()

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = dict(steps=3, dt5_steps=2, batch_size=4, toy_pool=32, eval_prompts=4, checkpoint_every=0, quality_videos=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Training in these tests is tiny: one thread avoids oversubscribing a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    from neoc.zoo.builtin import build

    torch.manual_seed(0)
    return build("builtin:pyramid-tiny", random_init=True)


def run_pass(pipe, work_dir: Path, **overrides):
    config = rte.ReplaceTextEncoderConfig(**{**FAST, **overrides})
    ctx = PassContext(seed=0, work_dir=work_dir, quiet=True)
    result, _ = rte.ReplaceTextEncoder(config).apply(pipe, ctx)
    return result


# ---- loss and metric, golden values by hand -------------------------------------------------------------------
def test_loss_uses_valid_tokens_only():
    # token 0: identical -> error 0, cos 1; token 1: (0,1) vs (1,0) -> squared error 2, cos 0; token 2 is padding
    predicted = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [50.0, -50.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    loss, parts = rte.distillation_loss(predicted, target, mask, w_mse=1.0, w_cd=0.1)
    assert parts["mse"].item() == pytest.approx(2.0 / 4)  # 2 valid tokens x 2 channels
    assert parts["cosine"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.5 + 0.1 * (1 - 0.5))


def test_agreement_is_token_weighted_and_ignores_padding():
    class Echo(nn.Module):  # ids -> one-hot-ish tokens; pads get garbage that must not count
        def __init__(self, scale):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(scale))

        def forward(self, ids, mask):
            tokens = torch.stack([ids.float() + 1, torch.ones_like(ids, dtype=torch.float)], -1) * self.scale
            return torch.where(mask[..., None].bool(), tokens, torch.full_like(tokens, 1e6))

    def tokenize(prompts):
        lengths = [len(p.split()) for p in prompts]
        ids = torch.zeros(len(prompts), 4, dtype=torch.long)
        mask = (torch.arange(4)[None] < torch.tensor(lengths)[:, None]).long()
        return ids, mask

    same = rte.context_agreement(Echo(1.0), Echo(1.0), tokenize, ["a b", "c"])
    assert same == {"cosine_similarity": pytest.approx(1.0), "mse": 0.0, "tokens": 3, "prompts": 2}
    doubled = rte.context_agreement(Echo(1.0), Echo(2.0), tokenize, ["a b", "c"], batch_size=1)
    # every valid teacher token is (1, 1): the doubled student is (2, 2) -> cos 1, squared error 1 per channel
    assert doubled["cosine_similarity"] == pytest.approx(1.0) and doubled["mse"] == pytest.approx(1.0)


def test_cached_teacher_states_give_the_same_targets(tiny):
    from neoc.train.loop import StepContext

    prompts = rte.TrainingPrompts(["a red circle rises", "a big blue star spins on a gradient"], ["a cat at dusk"],
                                  "", "", toy_fraction=0.5, negative_fraction=0.2)
    tokenize = rte.PromptTokenizer(tiny.prompt_encoder)
    encoder, head = tiny.component("text_encoder"), tiny.component("context_embedder")
    cache = rte.TeacherStates(encoder, tokenize, prompts.all_texts())
    assert len(cache.row) == 4  # three prompts and the (empty) negative prompt

    def batch(cached):
        ctx = StepContext(0, 0, 0, 1, torch.device("cpu"), torch.Generator().manual_seed(3))
        return rte.PromptBatches(encoder, head, tokenize, prompts, 6, cache if cached else None)(ctx)

    direct, looked_up = batch(False), batch(True)
    assert torch.equal(direct["ids"], looked_up["ids"]) and direct["mask"].shape[1] < 32  # cut to the longest
    torch.testing.assert_close(looked_up["target"], direct["target"], rtol=1e-4, atol=1e-5)


# ---- LoRA ------------------------------------------------------------------------------------------------------
def test_lora_starts_as_base_and_merges_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    x = torch.randn(4, 6)
    reference = model(x)
    names = add_lora(model, rank=2, alpha=4.0)
    assert names == ["0", "2"] and all(isinstance(model[i], LoRALinear) for i in (0, 2))
    torch.testing.assert_close(model(x), reference)  # B starts at zero
    assert [p.numel() for p in lora_parameters(model)] == [2 * 6, 5 * 2, 2 * 5, 3 * 2]
    assert not any(p.requires_grad for p in model[0].base.parameters())
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_()
    adapted = model(x)
    assert not torch.allclose(adapted, reference)
    assert merge_lora(model) == ["0", "2"]
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear and model[2].bias is None
    torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)


def test_lora_wraps_an_hf_t5_encoder(tiny):
    dt5 = rte.build_dt5(tiny, rte.ReplaceTextEncoderConfig())
    ids, mask = rte.PromptTokenizer(tiny.prompt_encoder)(["a red circle moves left", "a star"])
    before = dt5(ids, mask)
    names = add_lora(dt5, rank=4, alpha=8.0)
    assert any(n.endswith("SelfAttention.q") for n in names) and any(n.endswith("wo") for n in names)
    torch.testing.assert_close(dt5(ids, mask), before)  # HF's T5 reads `wo.weight.dtype`: the wrapper exposes it


# ---- the pass on a random-init tiny pipeline -----------------------------------------------------------------------
@pytest.mark.parametrize("mode, has_ce, has_ca", [("RM", False, True), ("EM", True, True), ("LORA", True, False),
                                                  ("TDT5", True, False)])
def test_modes_rewrite_the_ir(tiny, tmp_path, mode, has_ce, has_ca):
    pipe = tiny.clone()
    result = run_pass(pipe, tmp_path, mode=mode)
    out = result.pipeline
    assert isinstance(out.component("text_encoder"), DT5Encoder)
    assert not any(isinstance(m, LoRALinear) for m in out.component("text_encoder").modules())  # merged
    assert out.has("context_embedder") is has_ce and out.has("context_adapter") is has_ca
    called = {n.target for n in out.graph_module.graph.nodes if n.op == "call_module"}
    assert ("context_embedder" in called) is has_ce and ("context_adapter" in called) is has_ca
    m = result.metrics
    assert m["mode"] == mode and m["params_after"] < m["params_before"] == 1_712_576 + 24_704
    assert -1.0 <= m["cosine_similarity"] <= 1.0 and m["mse"] >= 0
    assert set(m["eval_sets"]) == {"toy_eval"} | REAL_SETS and m["world_size"] == 1
    assert m["train"][f"context_{mode}"]["steps"] == 3 and m["train"]["distil_t5"]["steps"] == 2
    assert "quality_note" in m  # random weights: no quality numbers
    tensors = load_file(result.artifacts["student"])
    manifest = json.loads(Path(result.artifacts["student_manifest"]).read_text())
    assert manifest["components"]["text_encoder"]["builder"] == "neoc.DT5Encoder"
    assert {k.split(".", 1)[0] for k in tensors} == set(manifest["components"])
    assert ("context_embedder" in manifest["removed"]) is (not has_ce)
    video_inputs = out.prepare_inputs("a red circle", seed=0)  # the rewritten text side runs in the graph
    context = rte.TextSide.of(out)(video_inputs["t5_ids"], video_inputs["t5_mask"])
    assert context.shape == (2, 32, 128)


def test_run_folder_round_trip_and_metrics_on_eval_prompts(tiny, tmp_path):
    from neoc.ir.runfolder import load_pipeline, save_pipeline

    prompts = tmp_path / "eval.txt"
    prompts.write_text("a blue square sinks on a plain red background\na green star rotates\n")
    ctx = PassContext(seed=0, work_dir=tmp_path / "work", quiet=True)
    ctx.eval.prompts = prompts
    pipe = tiny.clone()
    result, _ = rte.ReplaceTextEncoder(rte.ReplaceTextEncoderConfig(**FAST)).apply(pipe, ctx)
    m = result.metrics
    assert m["evaluated_on"] == ["eval.prompts"] and set(m["eval_sets"]) == {"eval.prompts", "toy_eval"} | REAL_SETS
    assert m["eval_sets"]["eval.prompts"]["prompts"] == 2
    assert m["cosine_similarity"] == m["eval_sets"]["eval.prompts"]["cosine_similarity"]  # the headline: the file
    loaded = load_pipeline(save_pipeline(result.pipeline, tmp_path / "pipeline"))
    ids, mask = rte.PromptTokenizer(pipe.prompt_encoder)(["a green star rotates"])
    torch.testing.assert_close(rte.TextSide.of(loaded)(ids, mask), rte.TextSide.of(result.pipeline)(ids, mask))


def test_training_improves_agreement(tiny, tmp_path):
    short = run_pass(tiny.clone(), tmp_path / "a", steps=1, dt5_steps=1, batch_size=16, lr=3e-3)
    longer = run_pass(tiny.clone(), tmp_path / "b", steps=20, dt5_steps=20, batch_size=16, lr=3e-3)
    assert longer.metrics["cosine_similarity"] > short.metrics["cosine_similarity"] + 0.1


def test_refuses_a_pipeline_already_rewritten(tiny, tmp_path):
    pipe = tiny.clone()
    run_pass(pipe, tmp_path / "first", mode="EM")
    with pytest.raises(CheckFailed, match="context_adapter"):
        run_pass(pipe, tmp_path / "second", mode="EM")


def test_interrupted_training_resumes_to_identical_weights(tiny, tmp_path, monkeypatch):
    settings = dict(mode="TDT5", steps=6, dt5_steps=4, checkpoint_every=2)
    reference = run_pass(tiny.clone(), tmp_path / "uninterrupted", **settings).pipeline

    original = rte.PromptBatches.__call__

    def crash_in_stage_two(self, ctx):
        if self.head is not None and ctx.step == 3:  # stage 2 (stage 1's targets are the bare T5 states)
            raise KeyboardInterrupt("simulated kill")
        return original(self, ctx)

    monkeypatch.setattr(rte.PromptBatches, "__call__", crash_in_stage_two)
    with pytest.raises(KeyboardInterrupt):
        run_pass(tiny.clone(), tmp_path / "interrupted", **settings)
    monkeypatch.setattr(rte.PromptBatches, "__call__", original)
    resumed = run_pass(tiny.clone(), tmp_path / "interrupted", **settings)
    assert resumed.metrics["train"]["distil_t5"]["resumed_from"] == 4  # finished stage: loaded, not re-run
    assert resumed.metrics["train"]["context_TDT5"]["resumed_from"] == 2
    for role in ("text_encoder", "context_embedder"):
        expected, got = reference.component(role).state_dict(), resumed.pipeline.component(role).state_dict()
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), role


DT5_BASE_WITH_PROJECTION = 109_628_544 + 768 * 4096 + 4096 * 4096  # T5 v1.1-base encoder + DistillT5 projection
SD3_CE = 4096 * 1536 + 1536


@pytest.mark.parametrize("mode, expected", [
    (None, 4_762_310_656 + SD3_CE),  # T5-XXL + CE: 4.769B (the paper's abstract: 4.762B T5-XXL)
    ("RM", DT5_BASE_WITH_PROJECTION + 130_053_632),  # DT5 0.130B + CA 0.130B = 0.260B (Table 2)
    ("EM", DT5_BASE_WITH_PROJECTION + SD3_CE + 3 * 2 * (1536 * 1536 + 1536) + 2 * (1536 * 1536 + 1536)),
    ("LORA", DT5_BASE_WITH_PROJECTION + SD3_CE),  # LoRA merged into DT5: 0.136B (Table 2)
    ("TDT5", DT5_BASE_WITH_PROJECTION + SD3_CE),  # 0.136B (Table 2)
])
def test_analyze_shrinks_the_real_scale_text_side(mode, expected):
    from neoc.zoo.builtin import build

    pipe = build("builtin:pyramid-flow-sd3", device="meta")
    if mode is not None:
        rte.ReplaceTextEncoder(rte.ReplaceTextEncoderConfig(mode=mode)).analyze(pipe)
    assert rte.text_side_params(pipe) == expected
    if mode == "RM":
        assert round(expected / 1e9, 3) == 0.260 and not pipe.has("context_embedder")


def test_context_adapter_starts_as_the_embedder_it_replaces(tiny):
    from neoc.models.context_adapter import ContextAdapter

    config = rte.ReplaceTextEncoderConfig(mode="RM")
    dt5, embedder = rte.build_dt5(tiny, config), tiny.component("context_embedder")
    adapter = rte.build_adapter(tiny, config)
    assert isinstance(adapter, ContextAdapter) and len(adapter.hidden) + 1 == 4  # 4 layers, a skip at each
    ctx = PassContext(seed=0, work_dir=Path("unused"), quiet=True)
    rte.start_adapter(adapter, embedder, ctx)
    ids, mask = rte.PromptTokenizer(tiny.prompt_encoder)(["a red circle moves left", "a star"])
    with torch.no_grad():
        torch.testing.assert_close(rte.TextSide(dt5, None, adapter)(ids, mask), rte.TextSide(dt5, embedder)(ids, mask))
        em = rte.build_adapter(tiny, rte.ReplaceTextEncoderConfig(mode="EM"))
        rte.start_adapter(em, None, ctx)  # EM: the identity after the frozen CE
        torch.testing.assert_close(rte.TextSide(dt5, embedder, em)(ids, mask), rte.TextSide(dt5, embedder)(ids, mask))
    loss, _ = rte.distillation_loss(rte.TextSide(dt5, None, adapter)(ids, mask), torch.zeros(2, ids.shape[1], 128),
                                    mask, 1.0, 0.1)
    loss.backward()  # the zeroed output layers of the residual branches get gradients (then the rest follows)
    for weight in [adapter.out_skip.weight, adapter.out.down.weight] + [layer.down.weight for layer in adapter.hidden]:
        assert weight.grad is not None and weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    python_path = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=python_path, CUDA_VISIBLE_DEVICES="")  # gloo on CPU
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "neoc.passes.replace_text_encoder", "--model", "builtin:pyramid-tiny", "--random-init",
               "--out", str(tmp_path / "run")]
    for key, value in {**FAST, "mode": "RM", "checkpoint_every": 2}.items():
        command += ["--set", f"{key}={value}"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2  # DDP over gloo; the pass checked that both ranks hold the same weights
    assert metrics["train"]["context_RM"]["steps"] == 3
    from neoc.ir.runfolder import load_pipeline

    pipe = load_pipeline(tmp_path / "run" / "pipeline")
    assert pipe.has("context_adapter") and not pipe.has("context_embedder")
