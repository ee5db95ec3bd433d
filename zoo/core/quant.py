"""8-bit and 4-bit (nf4) loading of Linear layers through bitsandbytes (runs on CPU too)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from zoo.errors import ConfigError

QuantMode = Literal["int8", "nf4"]


def _skipped(name: str, keep: Iterable[str]) -> bool:
    return any(name == k or name.startswith(k + ".") or fnmatch.fnmatchcase(name, k) for k in keep)


def _quantized_linear(linear: nn.Linear, mode: QuantMode) -> nn.Module:
    import bitsandbytes as bnb

    has_bias = linear.bias is not None
    weight = linear.weight.data.detach().to("cpu", torch.float32).contiguous()
    if mode == "int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False, threshold=6.0)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                  compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.detach().to(torch.float32), requires_grad=False)
    return layer.to(linear.weight.device if linear.weight.device.type != "meta" else "cpu")


def transformers_fp32_modules(module: nn.Module) -> tuple[str, ...]:
    """Patterns of layers a transformers backbone needs in full precision (T5's ``wo`` casts its input to the
    weight's dtype, which would be uint8 for nf4 weights)."""
    patterns = []
    for name, sub in module.named_modules():
        for attr in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict"):
            for layer in getattr(sub, attr, None) or ():
                prefix = f"{name}." if name else ""
                patterns += [f"{prefix}{layer}", f"{prefix}*.{layer}"]
    return tuple(patterns)


def quantize_linear_layers(module: nn.Module, mode: str, keep_in_full_precision: Iterable[str] = ()) -> list[str]:
    """Replace every ``nn.Linear`` (except ``keep_in_full_precision`` names/patterns) in place.

    Layers whose weight is shared with another module (tied embeddings) stay in full precision,
    since quantizing one side would silently untie them. Returns the names of replaced layers.
    """
    if mode not in ("int8", "nf4"):
        raise ConfigError(f"quantize={mode!r} is not supported; use None, 'int8' or 'nf4'")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:  # pragma: no cover - a dependency, but say how to fix it
        raise ConfigError("quantize= needs bitsandbytes: pip install bitsandbytes") from err

    keep = tuple(keep_in_full_precision) + transformers_fp32_modules(module)
    owners: dict[int, int] = {}
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    replaced = []
    for name, sub in list(module.named_modules()):
        for child_name, child in list(sub.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is not nn.Linear or _skipped(full, keep) or owners.get(id(child.weight), 0) > 1:
                continue
            setattr(sub, child_name, _quantized_linear(child, mode))
            replaced.append(full)
    return replaced
