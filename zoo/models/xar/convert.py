"""Upstream checkpoints -> zoo: xAR-B/L/H state dicts (OliverRen/xAR) and MAR's KL-16 VAE.

Our parameter names are the upstream ones under ``net.``; upstream's persistent buffers (the
block-causal ``mask`` and the RoPE tables) are recomputed here, and they are compared with ours
first so a checkpoint of a different entity layout is refused instead of loaded wrongly.
Pickles are read with ``torch.load(weights_only=True)``; ``model.safetensors`` is accepted too.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoo.errors import CheckpointFormatError, KeyMismatchError
from zoo.models.xar.autoencoder import load_autoencoder_weights, load_state_strict, read_state_dict
from zoo.models.xar.model import block_causal_mask
from zoo.models.xar.module import XARModule

ROPE_BUFFER = re.compile(r"^(encoder|decoder)_blocks\.\d+\.attn\.rope\.(freqs|freqs_cos|freqs_sin)$")
SIZES = {768: "xar-b", 1024: "xar-l", 1280: "xar-h"}
FILES = {"xar-b": "xAR-B.pth", "xar-l": "xAR-L.pth", "xar-h": "xAR-H.pth"}


def _check_layout(state: dict[str, Tensor], module: XARModule) -> None:
    """Upstream's mask / RoPE buffers must describe the same entity layout as our model."""
    net = module.net
    if "mask" in state:
        ours = torch.where(block_causal_mask(net.entity_ids), 0.0, float("-inf"))
        theirs = state["mask"].reshape(ours.shape) if state["mask"].numel() == ours.numel() else None
        if theirs is None or not torch.equal(theirs.float(), ours):
            raise KeyMismatchError("the checkpoint's attention mask describes a different entity layout "
                                   f"(shape {tuple(state['mask'].shape)}); build the model with the entity / "
                                   "entity_size / grid the checkpoint was trained with", mismatched=["mask"])
    cos = state.get("encoder_blocks.0.attn.rope.freqs_cos")
    if cos is not None and (cos.shape != net.rope_cos.shape
                            or not torch.allclose(cos.float(), net.rope_cos, atol=1e-5)):
        raise KeyMismatchError("the checkpoint's RoPE table orders positions differently from this model; "
                               "check the entity layout and head dimension",
                               mismatched=["encoder_blocks.0.attn.rope.freqs_cos"])


def load_upstream_xar(module: XARModule, state: dict[str, Tensor]) -> XARModule:
    """Load an upstream xAR state dict into ``module.net`` (and its EMA copy), all keys or nothing."""
    _check_layout(state, module)
    weights = {k: v for k, v in state.items() if k != "mask" and not ROPE_BUFFER.match(k)}
    load_state_strict(module.net, weights, "xAR checkpoint")
    if module.ema is not None:
        module.ema.load_state_dict(module.net.state_dict())
    return module


def infer_variant(state: dict[str, Tensor]) -> str:
    weight = state.get("z_proj.weight")
    if weight is None:
        raise CheckpointFormatError("not an xAR checkpoint: no 'z_proj.weight' key "
                                    f"(first keys: {sorted(state)[:5]})")
    dim = weight.shape[0]
    if dim not in SIZES:
        raise CheckpointFormatError(f"xAR checkpoint of width {dim} is none of B/L/H (768/1024/1280); "
                                    "build XARModule with matching sizes and call load_upstream_xar")
    return SIZES[dim]


def convert_xar(folder: str | Path, variant: str | None = None, overrides: dict[str, Any] | None = None) -> XARModule:
    """A ready XARModule from a folder holding ``xAR-{B,L,H}.pth`` (or ``model.safetensors``).

    MAR's ``kl16.ckpt`` in the same folder is loaded into the autoencoder; without it a warning says
    where to get it (the xAR repository does not ship the VAE).
    """
    import zoo

    folder = Path(folder)
    candidates = [folder / name for name in (*FILES.values(), "model.safetensors") if (folder / name).is_file()]
    if not candidates:
        raise CheckpointFormatError(f"no xAR checkpoint in {folder}; expected one of {sorted(FILES.values())} "
                                    "or model.safetensors")
    state = read_state_dict(candidates[0])
    name = variant or infer_variant(state)
    depth = sum(1 for k in state if re.match(r"^encoder_blocks\.\d+\.ada_lin\.1\.weight$", k))
    config = {**zoo.model_info(name).config, **(overrides or {})}
    if depth != config["encoder_depth"]:
        raise KeyMismatchError(f"{candidates[0].name} has {depth} encoder blocks but {name} has "
                               f"{config['encoder_depth']}; pass overrides={{'encoder_depth': {depth}, ...}}")
    module = load_upstream_xar(XARModule(**config), state)
    vae = folder / "kl16.ckpt"
    if vae.is_file():
        load_autoencoder_weights(module.autoencoder, vae)
    else:
        warnings.warn(f"{folder} has no kl16.ckpt: the transformer is loaded but the KL-16 autoencoder is "
                      "random, so decoded images are meaningless; copy MAR's kl16.ckpt into the folder "
                      "(github.com/LTH14/mar) and convert again", stacklevel=2)
    return module.eval()
