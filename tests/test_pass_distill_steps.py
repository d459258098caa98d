"""distill-steps: Pyramidal DMD / progressive pieces, collapse guard, schedules and NFE, resume (toy configs)."""

from __future__ import annotations

import pytest
import torch

import neoc.passes  # noqa: F401
from neoc.deploy.testing import CFG_SCHEDULE, apply_pass, run_through_manager, short_tiny_pipeline
from neoc.distill import pyramid as pyr
from neoc.distill.collapse_guard import CollapseError, CollapseGuard
from neoc.distill.dmd import cauchy_loss, dmd_gradient, dmd_loss
from neoc.distill.sampling import decode, generate_latents
from neoc.distill.train import DistillSettings, distill, student_schedule, teacher_schedule
from neoc.errors import CheckFailed
from neoc.ir import ops
from neoc.models import scheduler as sched
from neoc.testing import toy_pipeline
from neoc.train import flow_matching as fm

FAST = dict(steps=4, data_videos=2, batch_size=2, guard_every=2, guard_videos=1, teacher_steps=2, progress=False)


# ---- DMD loss pieces ------------------------------------------------------------------------------------------
def test_dmd_gradient_weight_and_surrogate():
    g = torch.Generator().manual_seed(0)
    v_t, v_f, flow = (torch.randn(3, 4, 1, 2, 2, generator=g) for _ in range(3))
    grad, weight = dmd_gradient(v_t, v_f, flow)
    expected_w = 1.0 / (v_t - flow).abs().mean(dim=(1, 2, 3, 4))
    assert torch.allclose(weight, expected_w)
    assert torch.allclose(grad, (v_t - v_f) * expected_w.view(-1, 1, 1, 1, 1))
    # the surrogate's gradient w.r.t. the student sample is exactly grad / numel
    z = torch.randn(3, 4, 1, 2, 2, requires_grad=True)
    dmd_loss(z, grad).backward()
    assert torch.allclose(z.grad, grad / z.numel(), atol=1e-7)
    # a teacher that matches the conditional flow better gives the sample a larger weight
    _, w_close = dmd_gradient(flow + 0.01, v_f, flow)
    _, w_far = dmd_gradient(flow + 1.0, v_f, flow)
    assert (w_close > w_far).all()
    # NaNs are zeroed, not propagated
    bad = v_t.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    assert torch.isfinite(dmd_gradient(bad, v_f, flow)[0]).all()


def test_cauchy_teacher_loss():
    z = torch.zeros(2, 4, 1, 2, 2)
    target = torch.full_like(z, 2.0)
    assert cauchy_loss(z, target).item() == pytest.approx(torch.log1p(torch.tensor(4.0)).item())
    assert cauchy_loss(target, target).item() == 0.0


def test_student_parametrisation_recovers_clean_latent_on_a_straight_flow():
    """x - sigma/(sigma_start - sigma_end) * (start - end) = Down(z, 2^i) when Up(Down(c)) = c (paper §3.4)."""
    specs = sched.stage_specs(3)
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(2, 4, 1, 2, 2, generator=g)
    noise_full = torch.randn(2, 4, 1, 8, 8, generator=g)
    clean_top = ops.up2_nearest(ops.up2_nearest(coarse))  # piecewise constant: every down/up is exact
    clean = fm.clean_pyramid(clean_top, 3)
    noise = fm.noise_pyramid(noise_full, 3)
    for stage in (1, 2):
        start, end = fm.stage_end_points(clean, noise, stage, specs)
        # a straight flow needs the same noise at both ends and Up(Down(c)) = c
        for r in (1.0, 0.5, 0.001):
            rr = torch.full((2,), r)
            x = pyr.interpolate(start, end, rr)
            z_hat = pyr.clean_from_flow(x, start - end, rr, specs[stage])
            assert torch.allclose(z_hat, clean[stage], atol=1e-5), (stage, r)
        # renoising the clean latent reproduces the stage's end points (eqs. 23-24 vs 17-18)
        y_start, y_end = pyr.renoise(clean[stage], noise[stage], specs[stage])
        assert torch.allclose(y_start, start, atol=1e-5) and torch.allclose(y_end, end, atol=1e-5)


def test_timesteps_match_the_sampler():
    spec = sched.stage_specs(3)[1]
    for n in (1, 4, 10):
        grid = torch.tensor(sched.local_sigmas(n)[:n])
        assert torch.allclose(pyr.timestep_for(grid, spec).double(),
                              torch.tensor(sched.stage_timesteps(spec, n), dtype=torch.float64), atol=1e-2)


# ---- the sampler mirror -------------------------------------------------------------------------------------------
def test_sampling_mirror_equals_the_graph():
    pipe = toy_pipeline()
    for m in pipe.components.values():
        m.eval()
    video = pipe.generate("a red circle moving left", seed=3)
    mirror = decode(pipe, generate_latents(pipe, "a red circle moving left", 3))
    assert torch.equal(video, mirror)



def test_sampling_mirror_history_hook_swaps_only_the_conditioning():
    from neoc.distill.pyramid import encode_prompts
    from neoc.distill.sampling import sample_latents

    pipe = toy_pipeline()
    for m in pipe.components.values():
        m.eval()
    cond, uncond = encode_prompts(pipe, ["a red circle moving left"])
    noise = pipe.draw_noise(3)
    own = sample_latents(pipe, cond, uncond, noise)
    seen = []
    same = sample_latents(pipe, cond, uncond, noise, history=lambda unit, x: seen.append((unit, x.shape[2])) or x)
    assert torch.equal(same, own) and seen == [(u, u) for u in range(1, own.shape[2])]
    zeroed = sample_latents(pipe, cond, uncond, noise, history=lambda unit, x: torch.zeros_like(x))
    assert torch.equal(zeroed[:, :, :1], own[:, :, :1])                      # unit 0 has no history
    assert not torch.allclose(zeroed[:, :, 1:], own[:, :, 1:])              # later units follow the swap

# ---- collapse guard ---------------------------------------------------------------------------------------------------
def _videos(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(2, 3, 1, 1, 1, generator=g) * 1.2 - 0.6
    return (base + 0.3 * torch.randn(2, 3, 9, 16, 16, generator=g)).clamp(-1, 1)


def test_guard_passes_healthy_videos():
    guard = CollapseGuard(_videos(0))
    report = guard.check(_videos(1), step=5)
    assert report.histogram_l1 < 1.0 and report.frame_variance > 0.1 * report.reference_variance


@pytest.mark.parametrize("kind, message", [
    ("nan", "non-finite"), ("flat", "frame variance"), ("saturated", "colour histogram")])
def test_guard_triggers(kind, message):
    guard = CollapseGuard(_videos(0))
    video = _videos(1)
    if kind == "nan":
        video[0, 0, 0, 0, 0] = float("nan")
    elif kind == "flat":
        video = torch.full_like(video, 0.2)
    else:
        video = torch.sign(video) * 0.999 + (video > 0).float() * 0.0  # everything pushed to +-1
        video[:, 1] = 1.0
    with pytest.raises(CollapseError, match=message) as info:
        guard.check(video, step=7)
    assert "step 7" in str(info.value) and "without writing" in str(info.value)


def test_pass_stops_on_a_collapsing_student(tmp_path):
    pipe = toy_pipeline(frames=9)
    with pytest.raises(CheckFailed, match="collapsed|non-finite"):
        apply_pass(pipe, "distill-steps", tmp_path, steps=6, data_videos=2, batch_size=2, guard_every=2,
                   guard_videos=1, lr=1e4, fake_lr=1e4, min_variance_ratio=0.9, max_histogram_l1=0.05,
                   quality_videos=0)
    assert pipe.schedule.label == "toy"  # the pipeline keeps its teacher


# ---- schedules and NFE counted from the re-emitted graph --------------------------------------------------------
@pytest.mark.parametrize("name, per_frame", [("1-1-1", 3), ("4-4-4", 12)])
def test_schedule_nfe_from_graph(name, per_frame):
    pipe = toy_pipeline(frames=17)  # 3 latent frames, teacher with CFG
    latent_frames = pipe.spec.latent_frames
    pipe.with_schedule(student_schedule(pipe.schedule, name))
    assert pipe.nfe() == per_frame * latent_frames == len(pipe.denoiser_nodes())
    pipe.with_schedule(teacher_schedule(toy_pipeline().schedule, name))
    assert pipe.nfe() == 2 * per_frame * latent_frames  # CFG kept: batch-2 = 2


def test_analyze_reemits_the_student_schedule():
    """``neoc analyze --recipe`` path: 49 frames = 7 latent frames -> 21 NFE for 1-1-1 (84 for 4-4-4)."""
    from neoc import registry
    from neoc.config import build_config

    cls = registry.get_pass("distill-steps")
    for name, nfe in (("1-1-1", 21), ("4-4-4", 84)):
        pipe = toy_pipeline(frames=49)
        assert pipe.nfe() == 2 * (6 + 6 * 3)
        cls(build_config(cls.Config, {"schedule": name}, "distill-steps")).analyze(pipe)
        assert pipe.nfe() == nfe


@pytest.mark.parametrize("method, schedule", [("dmd", "1-1-1"), ("progressive", "4-4-4"), ("adversarial", "1-1-1")])
def test_pass_runs_and_reports_contract_metrics(tmp_path, method, schedule):
    pipe = toy_pipeline(frames=9)
    teacher = {k: v.clone() for k, v in pipe.component("denoiser").state_dict().items()}
    result = apply_pass(pipe, "distill-steps", tmp_path, method=method, schedule=schedule, quality_videos=0,
                        **{k: v for k, v in FAST.items() if k != "progress"})
    m = result.metrics
    per_frame = 3 if schedule == "1-1-1" else 12
    assert m["method"] == method and m["schedule"] == schedule
    assert m["nfe_before"] == (6 + 3) * 2 and m["nfe_after"] == per_frame * 2 == result.pipeline.nfe()
    assert m["quality_student"] is None and m["quality_teacher_same_steps"] is None and "quality_note" in m
    assert m["guard"] and m["train_steps"] == 4
    student = result.pipeline.component("denoiser").state_dict()
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # it trained
    assert result.pipeline.schedule.guidance_scale == 1.0  # CFG distilled in


def test_dmd_on_the_reference_mmdit_and_run_folder_reload(tmp_path):
    """The real MMDiT (random init, toy decoder): DMD with CFG teacher, through the manager, reloadable."""
    from neoc.ir.runfolder import load_pipeline

    pipe = short_tiny_pipeline(frames=9, schedule=CFG_SCHEDULE)
    out, record, folder = run_through_manager(pipe, "distill-steps", tmp_path / "run", data="teacher",
                                              quality_videos=0, steps=2, data_videos=1, batch_size=1, guard_every=0,
                                              guard_videos=1)
    assert out.nfe() == 6
    loaded = load_pipeline(folder)
    assert loaded.nfe() == 6 and loaded.schedule.label == "student 1-1-1"
    for k, v in out.component("denoiser").state_dict().items():
        assert torch.equal(v, loaded.component("denoiser").state_dict()[k])


# ---- resume via neoc.train ----------------------------------------------------------------------------------------
def test_resume_is_bit_identical(tmp_path):
    def run(steps, out_dir):
        pipe = toy_pipeline(frames=9)
        settings = DistillSettings(**{**FAST, "steps": steps, "checkpoint_every": 2})
        return distill(pipe, settings, out_dir)

    straight = run(4, tmp_path / "a")
    first = run(2, tmp_path / "b")
    assert first.train.steps == 2
    resumed = run(4, tmp_path / "b")
    assert resumed.train.resumed_from == 2 and resumed.train.steps == 4
    for k, v in straight.student.state_dict().items():
        assert torch.equal(v, resumed.student.state_dict()[k]), k


# ---- first-frame generator (Neodragon §4) ---------------------------------------------------------------------------
def test_teacher_first_frame_continues_the_video(tmp_path):
    """With the teacher's own first-frame schedule the end-to-end video equals the graph's; the run folder
    rebuilds the component through its registered builder."""
    import copy

    from neoc.distill import e2e
    from neoc.ir.runfolder import load_pipeline, save_pipeline
    from neoc.models.first_frame import TeacherFirstFrame

    pipe = toy_pipeline(frames=9)
    for m in pipe.components.values():
        m.eval()
    reference = pipe.generate("a blue square", seed=2)
    pipe.replace_component("first_frame", TeacherFirstFrame(copy.deepcopy(pipe.component("denoiser")),
                                                            pipe.schedule.first_frame_steps,
                                                            pipe.schedule.guidance_scale))
    assert torch.equal(e2e.generate(pipe, "a blue square", seed=2), reference)
    assert pipe.nfe() == 18  # the graph does not call the first-frame generator
    loaded = load_pipeline(save_pipeline(pipe, tmp_path / "run"))
    assert torch.equal(e2e.generate(loaded, "a blue square", seed=2), reference)
    # a different first frame changes frame 0 and the video continues from it
    pipe.component("first_frame").steps = (1, 1, 1)
    other = e2e.generate(pipe, "a blue square", seed=2)
    assert not torch.equal(other[:, :, 0], reference[:, :, 0])


def test_sdxl_first_frame_boundary(tmp_path):
    from neoc.errors import InputError
    from neoc.models.first_frame import SDXLFirstFrame, resize_center_crop

    generator = SDXLFirstFrame(str(tmp_path / "ssd-1b"))
    with pytest.raises(InputError, match="diffusers|model_index.json"):
        generator.load()
    assert resize_center_crop(torch.rand(1, 3, 96, 128), 64, 64).shape == (1, 3, 64, 64)
