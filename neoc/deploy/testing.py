"""Small pipelines and helpers for the deployment-pass tests (tiny, random weights, short schedule)."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from neoc.ir.schedule import Schedule

SHORT_SCHEDULE = Schedule(first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1), guidance_scale=1.0,
                          video_guidance_scale=1.0, label="short")
CFG_SCHEDULE = Schedule(first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1), guidance_scale=3.0,
                        video_guidance_scale=2.0, label="short-cfg")


def short_tiny_pipeline(frames: int = 17, schedule: Schedule = SHORT_SCHEDULE, seed: int = 0, cheap_decoder=True):
    """``builtin:pyramid-tiny`` with random weights, ``frames`` frames and a 1-1-1 schedule. With
    ``cheap_decoder`` the VAE decoder is the toy decoder, so a whole-pipeline run takes well under a second."""
    from neoc.testing import ToyDecoder
    from neoc.zoo import builtin

    torch.manual_seed(seed)
    pipe = builtin.build("builtin:pyramid-tiny", random_init=True)
    pipe.spec = attrs.evolve(pipe.spec, frames=frames)
    pipe.with_schedule(schedule)
    if cheap_decoder:
        pipe.replace_component("vae_decoder", ToyDecoder(pipe.spec.latent_channels))
    for module in pipe.components.values():
        module.eval()
    return pipe


def run_through_manager(pipe, name: str, run_dir: Path, **params):
    """Run one pass through the PassManager; returns (output pipeline, its record, its saved run folder)."""
    from neoc import registry
    from neoc.config import build_config
    from neoc.manager import PassManager
    from neoc.recipe import PassEntry

    cls = registry.get_pass(name)
    manager = PassManager([PassEntry(name, build_config(cls.Config, params, name))], run_dir, quiet=True)
    out = manager.run(pipe)
    return out, manager.records[0], manager.pass_dir(0, name) / "pipeline"


def apply_pass(pipe, name: str, work_dir: Path, **params):
    """Apply one pass directly (no manager); returns its PassResult."""
    from neoc import registry
    from neoc.config import build_config
    from neoc.pass_api import PassContext

    cls = registry.get_pass(name)
    result, _ = cls(build_config(cls.Config, params, name)).apply(pipe, PassContext(seed=0, work_dir=work_dir,
                                                                                      quiet=True))
    return result
