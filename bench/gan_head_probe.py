"""Can the DMD GAN head (``distill-steps`` ``gan_weight``) tell data from student samples on ``builtin:pyramid-tiny``?

    python bench/gan_head_probe.py offline     # frozen features, full-batch head training, held-out accuracy per tau
    python bench/gan_head_probe.py online      # the run's minibatches (batch 4, tau ~ U(0, 1)), features frozen
    python bench/gan_head_probe.py online --stages 2 --tau 0.2 --steps 300   # one stage, fixed tau
    python bench/gan_head_probe.py online --stages 2 --student out/X/students/dmd-1-1-1.safetensors

Both use the initial student (the teacher at 1-1-1) and the shipped model as the fake score, frozen; only the head
(:func:`neoc.distill.adversarial.mlp_discriminator`) trains. ``offline``: stage 2 of later latent frames, 96
data / student pairs (64 train, 32 test) at fixed ``tau``, 400 full-batch AdamW steps at lr 1e-3, per-token logits
(the objective's head) and mean-pooled tokens. ``online``: 600 steps of the objective's own batches with the head
alone learning, running loss and accuracy every 50 steps; ``--stages`` / ``--tau`` restrict it to some pyramid
stages / a fixed tau (first-frame batches off then). Results are quoted in ``docs/distill-table.md``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F


def setup(data_videos: int, student: str | None = None):
    from neoc import sources
    from neoc.distill import data as dd
    from neoc.distill.dmd import PyramidalDMD
    from neoc.distill.pyramid import freeze
    from neoc.distill.train import student_schedule, teacher_guidance

    torch.manual_seed(0)  # the head's initialisation
    pipe = sources.load_source("builtin:pyramid-tiny")
    for m in pipe.components.values():
        m.eval()
    data = dd.toyworld_data(pipe, data_videos, 0)
    schedule = student_schedule(pipe.schedule, "1-1-1")
    denoiser = pipe.component("denoiser")
    objective = PyramidalDMD(*(freeze(copy.deepcopy(denoiser)) for _ in range(3)), teacher_guidance(pipe.schedule),
                             schedule.num_stages, schedule.gamma, gan_weight=1.0)
    if student is not None:  # a distilled student's samples as the fakes (safetensors from bench/distill_table.py)
        from safetensors.torch import load_file

        objective.student.load_state_dict(load_file(student))
    return data, schedule, objective


def pair(objective, batch, stage: int, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of the renoised data latent and of the renoised student sample (same noise, same tau)."""
    from neoc.distill.pyramid import interpolate, renoise, timestep_for

    spec = objective.specs[stage]
    tokens = objective._tokens[0]
    t = timestep_for(tau, spec)
    with torch.no_grad():
        z_hat = objective.student_sample(batch, stage)
        _, fake = tokens(batch.clips[stage], interpolate(*renoise(z_hat, batch.noise_fake[stage], spec), tau), t,
                         batch.text)
        _, real = tokens(batch.clips[stage], interpolate(*renoise(batch.clean[stage], batch.noise_fake[stage], spec),
                                                          tau), t, batch.text)
    return real, fake


def logits_fn(head, mode: str):
    if mode == "pool":
        return lambda x: head(x.mean(1)).squeeze(-1)
    return lambda x: head(x).squeeze(-1).mean(-1)


def offline() -> None:
    from neoc.distill import data as dd

    data, schedule, objective = setup(32)
    generator = torch.Generator().manual_seed(0)
    batches = [dd.make_batch(data, generator, 4, schedule.video_steps, False, schedule.num_stages, schedule.gamma,
                             0.0) for _ in range(24)]
    stage = schedule.num_stages - 1
    for tau_value in (0.02, 0.2, 0.5):
        pairs = [pair(objective, b, stage, torch.full_like(b.tau_fake[stage], tau_value)) for b in batches]
        real = torch.cat([r for r, _ in pairs])
        fake = torch.cat([f for _, f in pairs])
        n = real.shape[0]
        split = int(n * 2 / 3)
        x_train, x_test = torch.cat([real[:split], fake[:split]]), torch.cat([real[split:], fake[split:]])
        y_train = torch.cat([torch.ones(split), torch.zeros(split)])
        y_test = torch.cat([torch.ones(n - split), torch.zeros(n - split)])
        for mode in ("token", "pool"):
            head = copy.deepcopy(objective.discriminator)
            logits = logits_fn(head, mode)
            optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
            for _ in range(400):
                loss = F.binary_cross_entropy_with_logits(logits(x_train), y_train)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                accuracy = ((logits(x_test) > 0).float() == y_test).float().mean().item()
            print(f"tau {tau_value}: {mode} head, train loss {loss.item():.3f}, held-out accuracy {accuracy:.3f}",
                  flush=True)


def online(steps: int = 600, stages: list[int] | None = None, tau: float | None = None,
           student: str | None = None) -> None:
    from neoc.distill import data as dd

    data, schedule, objective = setup(64, student)
    first_frame_prob = 0.3 if stages is None and tau is None else 0.0
    stages = list(range(schedule.num_stages)) if stages is None else stages
    head = objective.discriminator
    logits = logits_fn(head, "token")
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses, hits, start = [], [], time.perf_counter()
    for step in range(steps):
        batch = dd.make_batch(data, generator, 4, schedule.video_steps, False, schedule.num_stages, schedule.gamma,
                              first_frame_prob)
        per_stage = []
        for stage in stages:
            level = batch.tau_fake[stage] if tau is None else torch.full_like(batch.tau_fake[stage], tau)
            real, fake = pair(objective, batch, stage, level)
            l_real, l_fake = logits(real), logits(fake)
            per_stage.append(F.softplus(-l_real).mean() + F.softplus(l_fake).mean())
            hits.append(((l_real > 0).float().mean() + (l_fake < 0).float().mean()).item() / 2)
        loss = torch.stack(per_stage).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 49:
            window = 50 * len(stages)
            print(f"step {step + 1}: loss {sum(losses[-50:]) / 50:.4f} (chance 1.386), accuracy "
                  f"{sum(hits[-window:]) / window:.3f}, {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("offline", "online"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=600, help="online: head steps")
    parser.add_argument("--stages", type=int, nargs="+", default=None, help="online: pyramid stages (default: all)")
    parser.add_argument("--tau", type=float, default=None, help="online: fixed tau (default: the run's U(0, 1))")
    parser.add_argument("--student", default=None, help="online: a distilled student's safetensors (default: the "
                        "initial student, i.e. the teacher)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    offline() if args.mode == "offline" else online(args.steps, args.stages, args.tau, args.student)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
