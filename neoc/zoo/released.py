"""Load a local folder in the released Pyramid-Flow SD3 layout (reference/pyramid-flow-facts.md §6)::

    diffusion_transformer_384p/   config.json + diffusion_pytorch_model.safetensors   (or _768p)
    causal_video_vae/             config.json + diffusion_pytorch_model.safetensors
    text_encoder/, text_encoder_2/ CLIP-L / CLIP-G (config.json + model.safetensors)
    text_encoder_3/               T5-XXL (config.json + sharded safetensors + index)
    tokenizer/, tokenizer_2/, tokenizer_3/

Weights load strictly (every tensor, every shape; errors name the tensor) and only from safetensors. With
``device='meta'`` only the config files are read: full-scale analysis without loading 13 GB.
"""

from __future__ import annotations

import json
from pathlib import Path

from neoc.errors import InputError
from neoc.ir.pipeline import Pipeline

DIT_FOLDERS = ("diffusion_transformer_384p", "diffusion_transformer_768p")


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder}: missing config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None


def _require(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise InputError(f"{root}: missing '{name}/' (released Pyramid-Flow layout expected)")
    return folder


def load_released_folder(root: str | Path, device: str = "cpu", resolution: str | None = None) -> Pipeline:
    from neoc.models.checkpoint import load_state_dict_strict, read_safetensors_folder
    from neoc.models.text_encoders import PromptEncoderBundle
    from neoc.zoo.builtin import assemble, native_schedule, sd3_spec

    root = Path(root)
    dits = [d for d in DIT_FOLDERS if (root / d).is_dir()]
    if resolution is not None:
        dits = [d for d in dits if d.endswith(resolution)]
    if not dits:
        raise InputError(f"{root}: no {' or '.join(DIT_FOLDERS)}/ folder")
    dit_folder = root / dits[0]
    vae_folder = _require(root, "causal_video_vae")
    t5_folder, clip_l_folder, clip_g_folder = (_require(root, n) for n in ("text_encoder_3", "text_encoder",
                                                                           "text_encoder_2"))
    spec = sd3_spec()
    if dits[0].endswith("768p"):
        import attrs

        spec = attrs.evolve(spec, height=768, width=1280)
    prompt_encoder = None
    if device != "meta":
        prompt_encoder = PromptEncoderBundle.from_pretrained_folder(root)
    # shapes first (meta, nothing allocated), then every tensor from the files (assigned, strict)
    pipe = assemble(spec, native_schedule(7.0, 5.0), _config(dit_folder), _config(vae_folder), _config(t5_folder),
                    _config(clip_l_folder), _config(clip_g_folder), device="meta", prompt_encoder=prompt_encoder,
                    source=str(root))
    if device == "meta":
        return pipe
    from neoc.models.text_encoders import PooledClipEncoders, T5TextEncoder

    # denoiser checkpoint = MMDiT incl. context_embedder; the IR holds the context embedder as its own node
    dit_state = read_safetensors_folder(dit_folder)
    ce_state = {k[len("context_embedder."):]: v for k, v in dit_state.items() if k.startswith("context_embedder.")}
    load_state_dict_strict(pipe.component("context_embedder"), ce_state, f"{dit_folder} [context_embedder]")
    load_state_dict_strict(pipe.component("denoiser"),
                           {k: v for k, v in dit_state.items() if not k.startswith("context_embedder.")},
                           str(dit_folder))
    vae_state = read_safetensors_folder(vae_folder)
    for role, prefixes in (("vae_decoder", ("decoder.", "post_quant_conv.")), ("vae_encoder", ("encoder.", "quant_conv."))):
        sub = {k: v for k, v in vae_state.items() if k.startswith(prefixes)}
        load_state_dict_strict(pipe.component(role), sub, f"{vae_folder} [{role}]")
    pipe.replace_component("text_encoder", T5TextEncoder.from_pretrained_folder(t5_folder))
    pipe.replace_component("clip_encoders", PooledClipEncoders.from_pretrained_folder(clip_l_folder, clip_g_folder))
    for role, module in pipe.components.items():
        meta = [n for n, p in module.named_parameters() if p.device.type == "meta"]
        if meta:
            raise InputError(f"{root}: tensor '{meta[0]}' of component {role} was not loaded")
    return pipe
