"""The xAR transformer: next-X prediction over entities of continuous tokens.

Parameter names follow the upstream layout (``z_proj``, ``class_emb``, ``time_embed.mlp``,
``encoder_blocks.N.attn.qkv``, ``mlp.fc1_g``, ``ada_lin.1``, ``decoder_embed``, ``pred``...) so the
converter only has to drop recomputed buffers. Layers timm has (SwiGLU, DropPath, RmsNorm) come from
timm; attention is written here because it needs 2D RoPE, an arbitrary block mask and a KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, RmsNorm, SwiGLU
from torch import Tensor, nn

from zoo.errors import ConfigError

Entity = Literal["token", "cell", "subsample", "image"]


# ---------------------------------------------------------------------------------------- entities
def entity_order(grid: int, entity: str, size: int = 1) -> tuple[Tensor, Tensor]:
    """Which grid position each sequence slot holds, and which entity it belongs to.

    The sequence is entity-major: entity 0's tokens first (raster order inside), then entity 1...
    ``token`` = one token per entity; ``cell`` = ``size`` x ``size`` neighbouring tokens (the paper's
    default); ``subsample`` = every ``size``-th token in both axes (``size``**2 entities); ``image`` =
    the whole grid in one step.
    """
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    if entity == "token":
        key, ent = rows * grid + cols, rows * grid + cols
    elif entity in ("cell", "subsample"):
        if size < 1 or grid % size:
            raise ConfigError(f"entity_size={size} must divide the token grid {grid}x{grid}; "
                              f"pick one of {[d for d in range(1, grid + 1) if grid % d == 0]}")
        if entity == "cell":
            ent = (rows // size) * (grid // size) + cols // size
        else:
            ent = (rows % size) * size + cols % size
        key = ent * grid * grid + rows * grid + cols
    elif entity == "image":
        key, ent = rows * grid + cols, torch.zeros_like(rows)
    else:
        raise ConfigError(f"unknown entity {entity!r}; use one of 'token', 'cell', 'subsample', 'image'")
    order = torch.argsort(key)
    return order, ent[order]


def block_causal_mask(entity_ids: Tensor) -> Tensor:
    """True where a query may attend: entity n sees entities <= n, bidirectionally inside n."""
    return entity_ids[:, None] >= entity_ids[None, :]


def teacher_forcing_mask(entity_ids: Tensor) -> Tensor:
    """Two-stream mask over [clean X_1..X_N | noisy F_1..F_N] for the clean-context ablation.

    Clean entity n sees clean entities <= n; noisy entity n sees clean entities < n and itself.
    """
    causal = block_causal_mask(entity_ids)
    strict = entity_ids[:, None] > entity_ids[None, :]
    same = entity_ids[:, None] == entity_ids[None, :]
    top = torch.cat([causal, torch.zeros_like(causal)], dim=1)
    bottom = torch.cat([strict, same], dim=1)
    return torch.cat([top, bottom], dim=0)


# ---------------------------------------------------------------------------------------- layers
class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t*1000 (integer steps, as upstream) followed by an MLP (DiT)."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        steps = (t * 1000).long().float()
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = steps[..., None] * freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def rope_tables(head_dim: int, grid: int, order: Tensor, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """2D RoPE (EVA-02 style used by xAR): half the head rotates with the row, half with the column.

    Frequencies are interleaved in pairs; tables are returned in sequence (entity-major) order.
    """
    if head_dim % 4:
        raise ConfigError(f"head dimension {head_dim} must be divisible by 4 for 2D RoPE; change dim or num_heads")
    quarter = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, quarter, 2).float() / quarter)
    pos = torch.arange(grid).float()
    per_axis = torch.repeat_interleave(pos[:, None] * freqs, 2, dim=-1)  # [grid, head_dim/2]
    angles = torch.cat([per_axis[:, None, :].expand(grid, grid, quarter),
                        per_axis[None, :, :].expand(grid, grid, quarter)], dim=-1).reshape(grid * grid, head_dim)
    angles = angles[order]
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


@dataclass
class KVCache:
    """Keys and values of the clean entities generated so far (one per attention layer)."""

    k: Tensor | None = None
    v: Tensor | None = None


@dataclass
class SequenceView:
    """What one forward pass sees: sequence positions, adaLN slot per token, the attention mask."""

    positions: Tensor  # [Lq] index into position embeddings / RoPE tables
    slots: Tensor  # [Lq] which row of the per-entity condition each token uses
    mask: Tensor | None = None  # [Lq, Lk] bool, True = may attend
    caches: list[KVCache] | None = None
    append: bool = False  # store this pass's keys/values (a clean entity) in the caches
    rope: tuple[Tensor, Tensor] = field(default=None)  # type: ignore[assignment]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, view: SequenceView, cache: KVCache | None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        cos, sin = view.rope
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None and cache.k is not None:
            k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
        if cache is not None and view.append:
            cache.k, cache.v = k, v
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=view.mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm block with DiT adaLN (shift/scale/gate per entity) and a GELU-gated SwiGLU (GEGLU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, attn_drop: float, drop_path: float):
        super().__init__()
        self.dim = dim
        self.norm1 = RmsNorm(dim, eps=1e-6, affine=False)
        self.attn = Attention(dim, num_heads, attn_drop, drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = RmsNorm(dim, eps=1e-6, affine=False)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio * 2 / 3), act_layer=nn.GELU, drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, cond: Tensor, view: SequenceView, cache: KVCache | None) -> Tensor:
        mod = self.ada_lin(cond).unflatten(-1, (6, self.dim))[:, view.slots]  # [B, Lq, 6, dim]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)
        x = x + self.drop_path1(self.attn(self.norm1(x) * (1 + scale1) + shift1, view, cache) * gamma1)
        return x + self.drop_path2(self.mlp(self.norm2(x) * (1 + scale2) + shift2) * gamma2)


# ---------------------------------------------------------------------------------------- model
class XARTransformer(nn.Module):
    """Velocity network f(F_1..F_n, t_n, class) of xAR over a ``grid`` x ``grid`` token map."""

    def __init__(self, token_dim: int = 16, grid: int = 16, entity: str = "cell", entity_size: int = 8,
                 dim: int = 768, encoder_depth: int = 8, decoder_depth: int = 8, num_heads: int = 12,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, dropout: float = 0.0,
                 attn_dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.token_dim, self.grid, self.num_classes = token_dim, grid, num_classes
        self.seq_len = grid * grid
        order, ids = entity_order(grid, entity, entity_size)
        self.num_entities = int(ids.max()) + 1
        self.entity_len = self.seq_len // self.num_entities
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("entity_ids", ids, persistent=False)
        cos, sin = rope_tables(dim // num_heads, grid, order)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

        self.class_emb = nn.Embedding(num_classes + 1, dim)  # last row = the null class for CFG
        self.time_embed = TimestepEmbedder(dim)
        self.z_proj = nn.Linear(token_dim, dim)
        self.z_proj_ln = RmsNorm(dim, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, dim))
        depth = encoder_depth + decoder_depth
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]
        self.encoder_blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, dropout, attn_dropout, rates[i]) for i in range(encoder_depth))
        self.encoder_norm = RmsNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dim)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, dim))
        self.decoder_blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, dropout, attn_dropout, rates[encoder_depth + i])
            for i in range(decoder_depth))
        self.decoder_norm = RmsNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, token_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.class_emb.weight, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned):
            nn.init.normal_(p, std=0.02)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in range(len(self.encoder_blocks) + len(self.decoder_blocks))]

    def condition(self, labels: Tensor, t: Tensor) -> Tensor:
        """One adaLN condition per entity slot: class embedding + timestep embedding ([B, S, dim])."""
        return self.class_emb(labels)[:, None] + self.time_embed(t)

    def forward(self, tokens: Tensor, cond: Tensor, view: SequenceView) -> Tensor:
        """Velocity for ``tokens`` [B, Lq, token_dim] laid out as ``view`` says."""
        view.rope = (self.rope_cos[view.positions], self.rope_sin[view.positions])
        caches = view.caches or [None] * (len(self.encoder_blocks) + len(self.decoder_blocks))
        x = self.z_proj(tokens) + self.encoder_pos_embed_learned[:, view.positions]
        x = self.z_proj_ln(x)
        for block, cache in zip(self.encoder_blocks, caches):
            x = block(x, cond, view, cache)
        x = self.decoder_embed(self.encoder_norm(x)) + self.decoder_pos_embed_learned[:, view.positions]
        for block, cache in zip(self.decoder_blocks, caches[len(self.encoder_blocks):]):
            x = block(x, cond, view, cache)
        return self.pred(self.decoder_norm(x))

    # ------------------------------------------------------------------ training views
    def full_view(self) -> SequenceView:
        """All entities at once under the block-causal mask (Noisy Context Learning)."""
        return SequenceView(positions=torch.arange(self.seq_len, device=self.order.device),
                            slots=self.entity_ids, mask=block_causal_mask(self.entity_ids))

    def two_stream_view(self) -> SequenceView:
        """Clean context stream + noisy stream (teacher-forcing ablation); slots N.. are the noisy ones."""
        positions = torch.arange(self.seq_len, device=self.order.device)
        return SequenceView(positions=torch.cat([positions, positions]),
                            slots=torch.cat([self.entity_ids, self.entity_ids + self.num_entities]),
                            mask=teacher_forcing_mask(self.entity_ids))

    def entity_view(self, n: int, caches: list[KVCache], append: bool) -> SequenceView:
        """Entity ``n`` alone, attending to the cached clean entities before it and to itself."""
        start = n * self.entity_len
        positions = torch.arange(start, start + self.entity_len, device=self.order.device)
        return SequenceView(positions=positions, slots=torch.zeros_like(positions), mask=None,
                            caches=caches, append=append)

    # ------------------------------------------------------------------ layout
    def to_sequence(self, grid_tokens: Tensor) -> Tensor:
        """[B, grid*grid, D] in raster order -> entity-major sequence order."""
        return grid_tokens[:, self.order]

    def to_grid(self, sequence: Tensor) -> Tensor:
        out = torch.empty_like(sequence)
        out[:, self.order] = sequence
        return out
