"""Loading a local folder in the released Pyramid-Flow layout (tiny configs, random weights, real layout)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from neoc import sources
from neoc.errors import InputError
from neoc.models.causal_vae import CausalVideoVAE
from neoc.models.mmdit import PyramidMMDiT
from neoc.models.text_encoders import PooledClipEncoders, PromptEncoderBundle, T5TextEncoder
from neoc.zoo import model_configs as mc
from neoc.zoo import text_configs as tc


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyramid-flow-sd3")
    torch.manual_seed(0)
    dit = PyramidMMDiT(**{k: v for k, v in mc.TINY_MMDIT_CONFIG.items()})
    vae = CausalVideoVAE(**mc.TINY_VAE_CONFIG)
    for name, module, config in (("diffusion_transformer_384p", dit, mc.TINY_MMDIT_CONFIG),
                                 ("causal_video_vae", vae, mc.TINY_VAE_CONFIG)):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        save_file({k: v.contiguous() for k, v in module.state_dict().items()},
                  str(root / name / "diffusion_pytorch_model.safetensors"))
    T5TextEncoder.from_config(tc.TINY_T5_CONFIG).save_pretrained_folder(root / "text_encoder_3")
    PooledClipEncoders.from_config(tc.TINY_CLIP_L_CONFIG, tc.TINY_CLIP_G_CONFIG).save_pretrained_folder(
        root / "text_encoder", root / "text_encoder_2")
    PromptEncoderBundle.tiny().save(root)
    return root, dit, vae


def test_released_folder_loads_every_tensor(released):
    root, dit, vae = released
    assert sources.classify(str(root))[0] == "released"
    pipe = sources.load_source(str(root))
    ref = dit.state_dict()
    got = pipe.component("denoiser").state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in got)
    assert torch.equal(pipe.component("context_embedder").weight, ref["context_embedder.weight"])
    assert torch.equal(pipe.component("vae_decoder").decoder.conv_in.conv.weight, vae.decoder.conv_in.conv.weight)
    for module in pipe.components.values():
        assert all(t.device.type == "cpu" for t in module.state_dict().values())
    assert pipe.prompt_encoder is not None and pipe.spec.t5_max_length == 128


def test_released_folder_on_meta_reads_configs_only(released):
    root, dit, _ = released
    pipe = sources.load_source(str(root), device="meta")
    assert pipe.component("denoiser").inner_dim == 128
    assert all(p.device.type == "meta" for p in pipe.component("denoiser").parameters())


def test_missing_tensor_is_named(released, tmp_path):
    import shutil

    root, _, _ = released
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    path = broken / "diffusion_transformer_384p" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    del state["transformer_blocks.3.attn.norm_q.weight"]
    save_file(state, str(path))
    with pytest.raises(InputError, match="transformer_blocks.3.attn.norm_q.weight"):
        sources.load_source(str(broken))


def test_pickle_checkpoint_refused(released, tmp_path):
    import shutil

    root, _, _ = released
    broken = tmp_path / "pickled"
    shutil.copytree(root, broken)
    vae_dir = broken / "causal_video_vae"
    (vae_dir / "diffusion_pytorch_model.safetensors").unlink()
    (vae_dir / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InputError, match="pickle"):
        sources.load_source(str(broken))


def test_random_init_small_config_generates_the_right_shape():
    import attrs

    from neoc.ir.schedule import Schedule
    from neoc.zoo.builtin import TINY_SIZE, build

    pipe = build("builtin:pyramid-tiny", random_init=True)
    pipe.with_schedule(Schedule(first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1), guidance_scale=1.0,
                                video_guidance_scale=1.0))
    pipe.spec = attrs.evolve(pipe.spec, frames=17)
    pipe.with_schedule(pipe.schedule)
    video = pipe.generate("a red circle moves left", seed=0)
    assert video.shape == (1, 3, 17, TINY_SIZE, TINY_SIZE)  # 1 + 8(T-1) frames for T = 3 latent frames
    assert torch.isfinite(video).all()
