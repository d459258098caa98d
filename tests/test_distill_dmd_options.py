"""distill-steps options beyond the paper: the DMD2-style GAN term (``gan_weight``) and the teacher's CFG during
distillation (``teacher_*guidance_scale``), on toy configs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import neoc.passes  # noqa: F401
from neoc.deploy.testing import apply_pass
from neoc.distill import data as dd
from neoc.distill.dmd import PyramidalDMD
from neoc.distill.pyramid import freeze, interpolate, renoise, timestep_for
from neoc.distill.train import DistillSettings, student_schedule, teacher_guidance
from neoc.errors import InputError
from neoc.models import scheduler as sched
from neoc.testing import toy_pipeline

FAST = dict(steps=4, data_videos=2, batch_size=2, guard_every=2, guard_videos=1, quality_videos=0)


def _objective(gan_weight: float = 1.0, gan_stages=None, gan_features: str = "fake"):
    torch.manual_seed(0)
    pipe = toy_pipeline(frames=9)
    schedule = student_schedule(pipe.schedule, "1-1-1")
    denoiser = pipe.component("denoiser")
    student, fake = copy.deepcopy(denoiser).train(), copy.deepcopy(denoiser).train()
    for p in [*student.parameters(), *fake.parameters()]:
        p.requires_grad_(True)
    objective = PyramidalDMD(student, fake, freeze(copy.deepcopy(denoiser)), teacher_guidance(pipe.schedule),
                             schedule.num_stages, schedule.gamma, gan_weight=gan_weight, gan_stages=gan_stages,
                             gan_features=gan_features)
    data = dd.teacher_data(pipe, 2, 0)
    batch = dd.make_batch(data, torch.Generator().manual_seed(3), 2, schedule.video_steps, True,
                          schedule.num_stages, schedule.gamma, first_frame_prob=0.0)
    return objective, batch


@pytest.mark.parametrize("features", ["fake", "teacher"])
def test_generator_gradient_is_the_chain_rule_and_spares_fake_and_head(features):
    objective, batch = _objective(gan_features=features)
    stage = 1
    spec = objective.specs[stage]
    clips, noise, tau = batch.clips[stage], batch.noise_dmd[stage], batch.tau_dmd[stage]
    z_hat = batch.clean[stage].clone().requires_grad_(True)  # stands in for a student sample
    t = timestep_for(tau, spec)

    # what the objective does: d loss / d z_tau with the fake and the head held out, then the linear path back
    z_tau = interpolate(*renoise(z_hat.detach(), noise, spec), tau)
    _, grad_tau, _ = objective._generator_grad(clips, z_tau, t, batch.text)
    assert all(p.grad is None for p in [*objective.fake.parameters(), *objective.discriminator.parameters(),
                                        *objective.teacher.parameters()])
    term = (interpolate(*renoise(z_hat, noise, spec), tau) * grad_tau).sum()
    (via_objective,) = torch.autograd.grad(term, z_hat)

    # the same loss differentiated end to end
    _, logits = objective._with_logits(clips, interpolate(*renoise(z_hat, noise, spec), tau), t, batch.text)
    loss = F.softplus(-logits).mean()
    (direct,) = torch.autograd.grad(loss, z_hat)
    assert direct.abs().max() > 0
    assert torch.allclose(via_objective, direct, atol=1e-6, rtol=1e-4)


def test_fake_only_steps_train_the_head_and_report_the_gan_losses():
    objective, batch = _objective()
    batch.student_step = False
    before = [p.detach().clone() for p in objective.discriminator.parameters()]
    loss, metrics = objective(batch)
    assert {"loss_disc", "loss_gan"} <= set(metrics) and torch.isfinite(metrics["loss_disc"])
    loss.backward()
    assert all(p.grad is None for p in objective.student.parameters())  # fake-only: the student is untouched
    optimizer = torch.optim.SGD(objective.discriminator.parameters(), lr=0.1)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, objective.discriminator.parameters()))


@pytest.mark.parametrize("features, trunk_learns", [("fake", True), ("teacher", False)])
def test_discriminator_loss_reaches_the_trunk_only_for_fake_features(features, trunk_learns):
    """With the frozen teacher's tokens only the head learns to discriminate; with the fake score's, its trunk too."""
    objective, batch = _objective(gan_features=features)
    stage = 2
    spec, tau = objective.specs[stage], batch.tau_fake[stage]
    x_fake = interpolate(*renoise(batch.clean[stage] + 0.5, batch.noise_fake[stage], spec), tau)
    x_real = interpolate(*renoise(batch.clean[stage], batch.noise_fake[stage], spec), tau)
    v_fake, disc_loss = objective._disc_fake_flow(batch.clips[stage], x_fake, x_real, timestep_for(tau, spec),
                                                  batch.text)
    assert v_fake.shape == x_fake.shape
    disc_loss.backward()
    assert all(p.grad is not None for p in objective.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.fake.parameters()) == trunk_learns
    assert all(p.grad is None for p in objective.teacher.parameters())


def test_gan_features_reach_the_objective_through_the_pass(tmp_path):
    students = {}
    for features in ("fake", "teacher"):
        result = apply_pass(toy_pipeline(frames=9), "distill-steps", tmp_path / features, gan_weight=5.0,
                            gan_features=features, **FAST)
        students[features] = result.pipeline.component("denoiser").state_dict()
    assert any(not torch.allclose(students["fake"][k], students["teacher"][k]) for k in students["fake"])


def test_teacher_guidance_override_reaches_the_objective_and_the_report(tmp_path):
    from neoc.deploy.testing import CFG_SCHEDULE, short_tiny_pipeline

    result = apply_pass(short_tiny_pipeline(frames=9, schedule=CFG_SCHEDULE), "distill-steps", tmp_path, data="teacher",
                        teacher_video_guidance_scale=4.5, steps=1, data_videos=1, batch_size=1, guard_every=0,
                        guard_videos=1, quality_videos=0)
    base = [CFG_SCHEDULE.guidance_scale, CFG_SCHEDULE.video_guidance_scale]
    assert result.metrics["teacher_guidance"] == base
    assert result.metrics["distill_guidance"] == [base[0], 4.5]


def test_gan_weight_changes_the_student_through_the_pass(tmp_path):
    students = {}
    for weight in (0.0, 5.0):
        result = apply_pass(toy_pipeline(frames=9), "distill-steps", tmp_path / str(weight), gan_weight=weight,
                            **FAST)
        students[weight] = result.pipeline.component("denoiser").state_dict()
    assert any(not torch.allclose(students[0.0][k], students[5.0][k]) for k in students[0.0])


@pytest.mark.parametrize("stages, expected", [(None, [2, 2]), ((0, -1), [0, 0, 2, 2])])
def test_gan_term_reads_only_its_stages(stages, expected):
    """Default: the last (full-resolution) stage; the discriminator sees real and fake there, nowhere else."""
    objective, batch = _objective(gan_stages=stages)
    batch.student_step = False
    seen = []
    original = objective._with_logits

    def record(clips, x, t, text):
        seen.append(next(i for i, start in enumerate(batch.start) if x.shape[-1] == start.shape[-1]))  # by size
        return original(clips, x, t, text)

    objective._with_logits = record
    objective(batch)
    assert seen == expected
    batch.student_step = True
    seen.clear()
    loss, metrics = objective(batch)
    assert seen == [s for stage in expected[::2] for s in (stage, stage, stage)]  # + the generator's call
    assert metrics["gan_dmd_grad_ratio"] > 0


@pytest.mark.parametrize("stages, message", [((3,), r"stage\(s\) \[3\] outside the 3-stage pyramid"),
                                             ((), "at least one stage")])
def test_bad_gan_stages_are_refused(stages, message):
    from neoc.distill.dmd import gan_stage_set

    with pytest.raises(InputError, match=message):
        gan_stage_set(stages, 3)
    assert gan_stage_set((-1, 0), 3) == {0, 2} and gan_stage_set(None, 3) == {2}


def test_critic_warmup_holds_the_student_back(tmp_path, monkeypatch):
    """The first ``critic_warmup`` steps train only the fake score; then one student step per two."""
    flags = []
    make_batch = dd.make_batch

    def spy(data, generator, batch_size, steps, student_step, *args, **kwargs):
        flags.append(student_step)
        return make_batch(data, generator, batch_size, steps, student_step, *args, **kwargs)

    monkeypatch.setattr(dd, "make_batch", spy)
    apply_pass(toy_pipeline(frames=9), "distill-steps", tmp_path, **{**FAST, "steps": 6, "guard_every": 0},
               critic_warmup=3)
    assert flags == [False, False, False, True, False, True]


@pytest.mark.parametrize("settings, message", [({"gan_weight": -1.0}, ">= 0"),
                                               ({"critic_warmup": 300, "steps": 300}, "no student update"),
                                               ({"critic_warmup": 10, "method": "adversarial"}, "method 'dmd'"),
                                               ({"gan_weight": 0.5, "method": "progressive"}, "method 'dmd'"),
                                               ({"teacher_video_guidance_scale": 0.5}, ">= 1"),
                                               ({"gan_features": "vgg"}, "fake, teacher")])
def test_bad_gan_settings_are_refused(settings, message):
    with pytest.raises(InputError, match=message):
        DistillSettings(**settings)


def test_current_tokens_on_the_reference_mmdit():
    """On the real MMDiT the head sees the last block's tokens of the current latent only (not the history)."""
    from neoc.deploy.testing import CFG_SCHEDULE, short_tiny_pipeline
    from neoc.distill.dmd import CurrentTokens
    from neoc.distill.pyramid import predict

    pipe = short_tiny_pipeline(frames=9, schedule=CFG_SCHEDULE)
    denoiser = pipe.component("denoiser").eval()
    schedule = student_schedule(pipe.schedule, "1-1-1")
    data = dd.teacher_data(pipe, 1, 0)
    batch = dd.make_batch(data, torch.Generator().manual_seed(0), 1, schedule.video_steps, True,
                          schedule.num_stages, schedule.gamma, first_frame_prob=0.0)
    stage = schedule.num_stages - 1
    assert batch.clips[stage], "a later latent frame has history clips"
    x = batch.start[stage]
    t = timestep_for(batch.r_student[stage], sched.stage_specs(schedule.num_stages, schedule.gamma)[stage])
    tokens = CurrentTokens(denoiser)
    with torch.no_grad():
        out, current = tokens(batch.clips[stage], x, t, batch.text)
        assert torch.equal(out, predict(denoiser, batch.clips[stage], x, t, batch.text))
    p = denoiser.patch_size
    assert tokens.hooked and current.shape == (1, x.shape[2] * (x.shape[3] // p) * (x.shape[4] // p),
                                                denoiser.inner_dim)


def test_discriminator_head_keeps_momentum_and_its_own_lr():
    from neoc.distill.train import _optimizer

    objective, _ = _objective()
    optimizer = _optimizer(objective, DistillSettings(gan_weight=1.0, fake_lr=1e-4, disc_lr=1e-3))
    student, fake, head = optimizer.param_groups
    assert student["betas"] == fake["betas"] == (0.0, 0.999) and head["betas"] == (0.9, 0.999)
    assert head["lr"] == 1e-3 and fake["lr"] == 1e-4
    assert {id(p) for p in head["params"]} == {id(p) for p in objective.discriminator.parameters()}


def test_recipe_errors_name_the_field():
    from neoc.config import build_config
    from neoc.registry import get_pass

    config_cls = get_pass("distill-steps").Config
    for entry, message in [({"method": "progressive", "gan_weight": 0.5}, "applies to method 'dmd'"),
                           ({"teacher_guidance_scale": 0.5}, "must be >= 1.0"),
                           ({"gan_stages": [2]}, "set gan_weight > 0"),
                           ({"gan_features": "teacher"}, "set gan_weight > 0"),
                           ({"gan_weight": 1.0, "gan_features": "vgg"}, "'fake' | 'teacher'"),
                           ({"method": "progressive", "critic_warmup": 5}, "applies to method 'dmd'")]:
        with pytest.raises(InputError, match=message):
            build_config(config_cls, entry, "distill-steps")


def test_rollout_inputs_follow_the_sampler():
    """``rollout``: the student's last-stage sample from its own rollout is the 1-1-1 sampler's first latent frame."""
    from neoc.distill.sampling import sample_latents
    from neoc.ir import ops

    torch.manual_seed(0)
    pipe = toy_pipeline(frames=9)
    schedule = student_schedule(pipe.schedule, "1-1-1")
    denoiser = pipe.component("denoiser").eval()
    objective = PyramidalDMD(denoiser, copy.deepcopy(denoiser), freeze(copy.deepcopy(denoiser)),
                             teacher_guidance(pipe.schedule), schedule.num_stages, schedule.gamma,
                             rollout_steps=schedule.video_steps)
    data = dd.teacher_data(pipe, 1, 0)
    batch = dd.make_batch(data, torch.Generator().manual_seed(1), 1, schedule.video_steps, True, schedule.num_stages,
                          schedule.gamma, first_frame_prob=1.0, jump_noise=True)
    noise = pipe.draw_noise(7)
    batch.start[0] = ops.frame(noise["noise"], 0)
    batch.noise_jump = [None] + [ops.frame(noise[f"jump_noise_{s}"], 0) for s in range(1, schedule.num_stages)]
    with torch.no_grad():
        inputs = objective.rollout_inputs(batch)
        last = objective.student_sample(batch, schedule.num_stages - 1, inputs[-1])
    expected = sample_latents(pipe, batch.text, data.uncond, noise, schedule, denoiser=denoiser, num_units=1)
    assert torch.allclose(last, expected, atol=1e-5)
    assert not torch.allclose(inputs[-1], interpolate(batch.start[-1], batch.end[-1], batch.r_student[-1]))
    batch.noise_jump = None
    with pytest.raises(ValueError, match="jump_noise=True"):
        objective.rollout_inputs(batch)


def test_rollout_trains_through_the_pass(tmp_path):
    result = apply_pass(toy_pipeline(frames=9), "distill-steps", tmp_path, rollout=True, gan_weight=0.1,
                        critic_warmup=1, **FAST)
    assert result.metrics["nfe_after"] < result.metrics["nfe_before"]


def test_rollout_keeps_the_cauchy_loss_on_the_data_path():
    from neoc.distill.dmd import cauchy_loss

    objective, batch = _objective(gan_weight=0.0)
    objective.rollout_steps = (1, 1, 1)
    generator = torch.Generator().manual_seed(5)
    batch.noise_jump = [None] + [torch.randn(batch.start[s].shape, generator=generator) for s in (1, 2)]
    with torch.no_grad():
        _, metrics = objective(batch)
        on_data = torch.stack([cauchy_loss(objective.student_sample(batch, s), batch.clean[s]) for s in range(3)])
        on_rollout = torch.stack([cauchy_loss(objective.student_sample(batch, s, x), batch.clean[s])
                                  for s, x in enumerate(objective.rollout_inputs(batch))])
    assert torch.allclose(metrics["loss_teacher"], on_data.mean())
    assert not torch.allclose(on_rollout.mean(), on_data.mean())


def test_gan_stage_outside_the_pyramid_fails_before_training(tmp_path):
    with pytest.raises(InputError, match=r"distill-steps: gan_stages \[5\]"):
        apply_pass(toy_pipeline(frames=9), "distill-steps", tmp_path, gan_weight=0.1, gan_stages=(5,), **FAST)
    assert not any(tmp_path.rglob("*.safetensors"))  # nothing trained or written
