"""KL autoencoder for continuous latents, in the LDM / MAR key layout.

One configurable architecture serves both the tiny trainable autoencoder for digits and MAR's
KL-16 (``ch=128, ch_mult=(1, 1, 2, 2, 4), z_channels=16``, 256px -> 16x16x16), so the upstream
``kl16.ckpt`` loads by name (see ``convert.py``). GroupNorm + SiLU ResNet blocks, a single-head
spatial attention in the middle, stride-2 convolutions with asymmetric padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import CheckpointFormatError, ConfigError, KeyMismatchError


@dataclasses.dataclass
class AutoencoderConfig:
    """Shape of the KL autoencoder. Defaults: a tiny one for 8x8 digits (latent 4x4x4)."""

    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 4
    in_channels: int = 1
    resolution: int = 8
    num_groups: int = 8
    dropout: float = 0.0

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def coerce(cls, value: AutoencoderConfig | Mapping[str, Any] | None, **defaults: Any) -> AutoencoderConfig:
        if isinstance(value, cls):
            return value
        fields = {f.name for f in dataclasses.fields(cls)}
        given = dict(value or {})
        unknown = set(given) - fields
        if unknown:
            raise ConfigError(f"unknown autoencoder setting(s) {sorted(unknown)}; known: {sorted(fields)}")
        merged = {**{k: v for k, v in defaults.items() if k in fields and k not in given}, **given}
        for key in ("ch_mult", "attn_resolutions"):
            if key in merged:
                merged[key] = tuple(merged[key])
        cfg = cls(**merged)
        if cfg.resolution % 2 ** (len(cfg.ch_mult) - 1):
            raise ConfigError(f"resolution {cfg.resolution} is not divisible by the autoencoder's downsampling "
                              f"2**{len(cfg.ch_mult) - 1}; change ch_mult or the image size")
        return cfg


def mar_kl16_config() -> AutoencoderConfig:
    """MAR's KL-16 VAE used by xAR (GroupNorm 32, attention at 16x16 in the encoder)."""
    return AutoencoderConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                             z_channels=16, in_channels=3, resolution=256, num_groups=32)


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = _norm(c, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as in LDM


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


def _mid(c: int, cfg: AutoencoderConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(c, c, cfg.num_groups, cfg.dropout)
    mid.attn_1 = AttnBlock(c, cfg.num_groups)
    mid.block_2 = ResnetBlock(c, c, cfg.num_groups, cfg.dropout)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, c = cfg.resolution, cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(c, cfg.ch * mult, cfg.num_groups, cfg.dropout))
                c = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(c, cfg.num_groups))
            level = _level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c)
                res //= 2
            self.down.append(level)
        self.mid = _mid(c, cfg)
        self.norm_out = _norm(c, cfg.num_groups)
        self.conv_out = nn.Conv2d(c, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        c = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _mid(c, cfg)
        levels = []
        for i in reversed(range(len(cfg.ch_mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(c, cfg.ch * cfg.ch_mult[i], cfg.num_groups, cfg.dropout))
                c = cfg.ch * cfg.ch_mult[i]
            level = _level(blocks, [])  # MAR's decoder has no attention outside the middle
            if i != 0:
                level.upsample = Upsample(c)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c, cfg.num_groups)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """Posterior q(z|x) = N(mean, exp(logvar)) with the log-variance clamped as in LDM."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + self.std * torch.randn(self.mean.shape, generator=generator, device=self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) summed over latent dimensions, per example."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class KLAutoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], what: str, ignore: tuple[str, ...] = ()) -> None:
    """Load every parameter or refuse, naming missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not any(k == i or k.endswith("." + i) for i in ignore)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise KeyMismatchError(
            f"{what} does not match the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}, mis-shaped {mismatched[:8]}; "
            "check that the model configuration matches the checkpoint (sizes, entity layout, latent type)",
            missing, unexpected, mismatched)
    module.load_state_dict(state, strict=True)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A safetensors file or a torch pickle read with ``weights_only=True`` (never arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"checkpoint file {path} does not exist; "
                                    "pass the path of a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointFormatError(f"cannot read {path} as a weights-only torch checkpoint: {err}") from err
    for key in ("model", "state_dict", "model_ema"):  # wrappers used by MAR / xAR / Lightning
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointFormatError(f"{path} does not hold a flat state dict of tensors")
    return state


def load_autoencoder_weights(autoencoder: KLAutoencoder, path: str | Path) -> None:
    """Weights from a file: an MAR ``kl16.ckpt``, a safetensors file, or an autoencoder Lightning checkpoint."""
    state = read_state_dict(path)
    if any(k.startswith("autoencoder.") for k in state):
        state = {k[len("autoencoder."):]: v for k, v in state.items() if k.startswith("autoencoder.")}
    load_state_strict(autoencoder, state, f"autoencoder checkpoint {path}")
