"""Safetensors-only reading (single file, folder, sharded index), pickle refusal, strict loading errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from neoc.errors import InputError
from neoc.models.checkpoint import load_state_dict_strict, normalize_released_keys, read_safetensors_folder


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.register_buffer("table", torch.zeros(4), persistent=True)
        self.register_buffer("scratch", torch.zeros(1), persistent=False)


def tiny_state() -> dict[str, torch.Tensor]:
    return {"proj.weight": torch.ones(2, 3), "proj.bias": torch.full((2,), 2.0), "table": torch.arange(4.0)}


def test_single_file_and_folder(tmp_path):
    save_file(tiny_state(), tmp_path / "diffusion_pytorch_model.safetensors")
    from_folder = read_safetensors_folder(tmp_path)
    from_file = read_safetensors_folder(tmp_path / "diffusion_pytorch_model.safetensors")
    assert set(from_folder) == set(from_file) == {"proj.weight", "proj.bias", "table"}
    assert torch.equal(from_folder["table"], torch.arange(4.0))


def test_sharded_index(tmp_path):
    state = tiny_state()
    save_file({"proj.weight": state["proj.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"proj.bias": state["proj.bias"], "table": state["table"]}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"proj.weight": "model-00001-of-00002.safetensors", "proj.bias": "model-00002-of-00002.safetensors",
                  "table": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = read_safetensors_folder(tmp_path)
    assert set(loaded) == set(weight_map)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match="shard model-00002-of-00002.safetensors is missing"):
        read_safetensors_folder(tmp_path)


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "model.pt", "last.ckpt"])
def test_pickles_are_refused_with_conversion_hint(tmp_path, name):
    (tmp_path / name).write_bytes(b"not even opened")
    for target in (tmp_path, tmp_path / name):
        with pytest.raises(InputError) as error:
            read_safetensors_folder(target)
        message = str(error.value)
        assert name in message and "save_file" in message and "safetensors" in message


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_safetensors_folder(tmp_path / "nope")
    with pytest.raises(InputError, match="no .safetensors"):
        read_safetensors_folder(tmp_path)


def test_strict_load_copies_values_and_strips_dit_prefix():
    module = Tiny()
    load_state_dict_strict(module, {"dit." + k: v for k, v in tiny_state().items()}, "ckpt")
    assert torch.equal(module.proj.bias, torch.full((2,), 2.0)) and torch.equal(module.table, torch.arange(4.0))


def test_strict_load_names_missing_unexpected_and_shape_mismatch():
    state = tiny_state()
    del state["table"]
    with pytest.raises(InputError, match=r"ckpt: missing tensor 'table' \(expected shape \(4,\)\)"):
        load_state_dict_strict(Tiny(), state, "ckpt")
    state = {**tiny_state(), "extra.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="unexpected tensor 'extra.weight'"):
        load_state_dict_strict(Tiny(), state, "ckpt")
    state = {**tiny_state(), "proj.weight": torch.zeros(3, 2)}
    with pytest.raises(InputError, match=r"'proj.weight' has shape \(3, 2\), expected \(2, 3\)"):
        load_state_dict_strict(Tiny(), state, "ckpt")


def test_legacy_attention_keys_are_renamed():
    renamed = normalize_released_keys({
        "decoder.mid_block.attentions.0.query.weight": torch.zeros(1),
        "decoder.mid_block.attentions.0.proj_attn.bias": torch.zeros(1),
        "decoder.mid_block.attentions.0.group_norm.weight": torch.zeros(1),
    })
    prefix = "decoder.mid_block.attentions.0."
    assert set(renamed) == {prefix + "to_q.weight", prefix + "to_out.0.bias", prefix + "group_norm.weight"}
