"""Builtin model sources: ``builtin:pyramid-tiny`` (trained by neoc, weights shipped) and
``builtin:pyramid-flow-sd3`` (the released configuration; no weights ship — meta device or random init).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from neoc.errors import InputError
from neoc.ir.pipeline import Pipeline
from neoc.ir.schedule import PipelineSpec, Schedule
from neoc.zoo import model_configs as mc
from neoc.zoo import text_configs as tc

WEIGHTS_DIR = Path(__file__).parent / "weights"
TINY_WEIGHTS = WEIGHTS_DIR / "pyramid-tiny.safetensors"          # text side + denoiser
TINY_VAE_WEIGHTS = WEIGHTS_DIR / "pyramid-tiny-vae.safetensors"  # VAE encoder + decoder
VAE_ROLES = ("vae_encoder", "vae_decoder")
TINY_META = WEIGHTS_DIR / "pyramid-tiny.json"
# a TAEHV-family decoder pretrained on a sibling latent space: swap-decoder's `init: builtin` (not a pipeline role)
TINY_TAEHV_WEIGHTS = WEIGHTS_DIR / "pyramid-tiny-taehv.safetensors"
REBUILD_HINT = "python -m neoc.zoo.build_tiny"

# Latent normalisation of the tiny VAE: measured on encoded toy-world videos by build_tiny and stored in
# pyramid-tiny.json; these defaults are only used for random-init pipelines.
DEFAULT_TINY_NORM = (0.0, 1.0, 0.0, 1.0)
TINY_SIZE = 64  # toy-world frames are rendered at 64x64 for the tiny pipeline (the probe reads 64x64 too)


def tiny_spec(norm=DEFAULT_TINY_NORM) -> PipelineSpec:
    return PipelineSpec("pyramid-tiny", frames=49, height=TINY_SIZE, width=TINY_SIZE,
                        t5_max_length=tc.TINY_T5_MAX_LENGTH, clip_max_length=tc.TINY_CLIP_MAX_LENGTH,
                        image_shift=norm[0], image_scale=norm[1], video_shift=norm[2], video_scale=norm[3],
                        prompt_suffix=tc.TINY_PROMPT_SUFFIX, negative_prompt=tc.TINY_NEGATIVE_PROMPT, fps=12)


def sd3_spec() -> PipelineSpec:
    return PipelineSpec("pyramid-flow-sd3", frames=49, height=384, width=640, t5_max_length=tc.SD3_T5_MAX_LENGTH,
                        clip_max_length=tc.SD3_CLIP_MAX_LENGTH, prompt_suffix=tc.SD3_PROMPT_SUFFIX,
                        negative_prompt=tc.SD3_NEGATIVE_PROMPT, fps=24)


def native_schedule(guidance_scale: float = 7.0, video_guidance_scale: float = 5.0) -> Schedule:
    """The reference t2v settings: [20,20,20] for the first latent frame, [10,10,10] after; CFG 7 / 5."""
    return Schedule(first_frame_steps=(20, 20, 20), video_steps=(10, 10, 10), guidance_scale=guidance_scale,
                    video_guidance_scale=video_guidance_scale, label="native")


def assemble(spec: PipelineSpec, schedule: Schedule, mmdit_config: dict, vae_config: dict, t5_config: dict,
             clip_l_config: dict, clip_g_config: dict, device: str = "cpu", prompt_encoder=None,
             source: str = "") -> Pipeline:
    """Build the reference pipeline's components from configs (random init, or shapes only on meta)."""
    from neoc.zoo.components import build_clips, build_mmdit, build_t5, build_vae_decoder, build_vae_encoder

    dev = "meta" if device == "meta" else None
    denoiser = build_mmdit(mmdit_config, device=dev)
    context_embedder = denoiser.split_context_embedder()
    norm = [spec.image_shift, spec.image_scale, spec.video_shift, spec.video_scale]
    components = {
        "text_encoder": build_t5(t5_config, device=dev),
        "clip_encoders": build_clips({"clip_l": clip_l_config, "clip_g": clip_g_config}, device=dev),
        "context_embedder": context_embedder,
        "vae_encoder": build_vae_encoder({"vae": vae_config, "norm": norm}, device=dev),
        "denoiser": denoiser,
        "vae_decoder": build_vae_decoder({"vae": vae_config, "norm": norm}, device=dev),
    }
    return Pipeline(spec, schedule, components, prompt_encoder=prompt_encoder, source=source)


def tiny_metadata() -> dict:
    if not TINY_META.is_file():
        return {}
    return json.loads(TINY_META.read_text())


def build_tiny(device: str = "cpu", random_init: bool = False) -> Pipeline:
    from neoc.models.text_encoders import PromptEncoderBundle

    meta = {} if random_init else tiny_metadata()
    missing = [p for p in (TINY_WEIGHTS, TINY_VAE_WEIGHTS) if not p.is_file()]
    if not random_init and device != "meta" and missing:
        raise InputError(f"builtin:pyramid-tiny: shipped weights not found ({missing[0]}); rebuild them with "
                         f"`{REBUILD_HINT}` or pass --random-init")
    norm = tuple(meta.get("latent_norm", DEFAULT_TINY_NORM))
    schedule = native_schedule(*meta.get("guidance", (7.0, 5.0)))
    pipe = assemble(tiny_spec(norm), schedule, mc.TINY_MMDIT_CONFIG, mc.TINY_VAE_CONFIG, tc.TINY_T5_CONFIG,
                    tc.TINY_CLIP_L_CONFIG, tc.TINY_CLIP_G_CONFIG, device=device,
                    prompt_encoder=PromptEncoderBundle.tiny(), source="builtin:pyramid-tiny")
    if random_init or device == "meta":
        if random_init:
            pipe.source = "builtin:pyramid-tiny (random init)"
        return pipe
    load_role_weights(pipe, [TINY_WEIGHTS, TINY_VAE_WEIGHTS])
    pipe.info["weights"] = {"files": [TINY_WEIGHTS.name, TINY_VAE_WEIGHTS.name], "training": meta.get("training", {})}
    return pipe


def build_sd3(device: str = "meta", random_init: bool = False) -> Pipeline:
    if device != "meta" and not random_init:
        raise InputError("builtin:pyramid-flow-sd3 ships no weights: use it for analysis (meta device) or with "
                         "--random-init; for the real model pass the released checkpoint folder as --model")
    return assemble(sd3_spec(), native_schedule(7.0, 5.0), mc.SD3_MMDIT_CONFIG, mc.SD3_VAE_CONFIG,
                    tc.SD3_T5_CONFIG, tc.SD3_CLIP_L_CONFIG, tc.SD3_CLIP_G_CONFIG, device=device,
                    source="builtin:pyramid-flow-sd3")


def build(source: str, device: str = "cpu", random_init: bool = False) -> Pipeline:
    if source == "builtin:pyramid-tiny":
        return build_tiny(device=device, random_init=random_init)
    if source == "builtin:pyramid-flow-sd3":
        return build_sd3(device="meta" if (device == "meta" or not random_init) else device, random_init=random_init)
    if source == "builtin:bidit-tiny":
        from neoc.zoo.bidit_tiny import build_bidit_tiny

        return build_bidit_tiny(device=device, random_init=random_init)
    raise InputError(f"unknown builtin model source '{source}'")


# ---- shipped weights: safetensors files, tensors prefixed by component role -------------------------------------
def role_state(pipe: Pipeline, dtype: torch.dtype | None = torch.float16,
               roles: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for role, module in pipe.components.items():
        if roles is not None and role not in roles:
            continue
        for key, value in module.state_dict().items():
            t = value.detach().cpu().contiguous()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[f"{role}.{key}"] = t.clone()
    return out


def save_role_weights(pipe: Pipeline, path: Path, metadata: dict | None = None,
                      dtype: torch.dtype | None = torch.float16, roles: tuple[str, ...] | None = None) -> None:
    """Write the components named in ``roles`` (all when None) to one safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(role_state(pipe, dtype, roles), str(path),
              metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})


def load_role_weights(pipe: Pipeline, paths: Path | list[Path]) -> None:
    """Load role-prefixed weights from one file or several (their union must cover every component)."""
    from neoc.models.checkpoint import load_state_dict_strict

    paths = [paths] if isinstance(paths, Path) else list(paths)
    path = paths[0]
    state = {}
    for part in paths:
        state.update(load_file(str(part)))
    for role, module in pipe.components.items():
        prefix = f"{role}."
        sub = {k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in state.items()
               if k.startswith(prefix)}
        load_state_dict_strict(module, sub, f"{path.name} [{role}]")
    roles = {k.split(".", 1)[0] for k in state}
    extra = sorted(roles - set(pipe.components))
    if extra:
        raise InputError(f"{path}: weights for unknown component role '{extra[0]}'")
