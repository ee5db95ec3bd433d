"""DNABERT-2 encoder: BERT without position embeddings, ALiBi attention bias, GEGLU FFN, post-LN.

Module and parameter names follow the upstream ``zhihan1996/DNABERT-2-117M`` layout
(``bert.encoder.layer.{i}.attention.self.Wqkv`` ...) so the converter is a strict key check, not a
rename table. transformers has no encoder with ALiBi + GLU, hence this file.

Speed: attention is ``torch.nn.functional.scaled_dot_product_attention`` with the ALiBi + padding
bias as a float mask (the same math as upstream's unpadded Triton path). torch picks its fused
kernel from the device and dtype; nothing here imports Triton, so CPU never takes a GPU-only path
(upstream issues #19/#20/#57).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError


@dataclasses.dataclass
class DnaBert2Config:
    """Encoder sizes; the defaults are the paper's 117M model."""

    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    alibi_starting_size: int = 512
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                              f"{self.num_attention_heads}; pick a head count that divides it")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "alibi_starting_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def coerce(cls, value: "DnaBert2Config | Mapping[str, Any] | None") -> "DnaBert2Config":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"unknown DNABERT-2 config key(s) {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise ConfigError(f"config must be a DnaBert2Config or a mapping, got {type(value).__name__}")


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022): geometric 2^(-8/n)...; other head counts interleave the next power."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]


def alibi_bias(num_heads: int, size: int) -> torch.Tensor:
    """Symmetric bias ``-slope_h * |i - j|`` of shape [1, heads, size, size]."""
    pos = torch.arange(size)
    distance = (pos[None, :] - pos[:, None]).abs().float()
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32)
    return (-slopes[:, None, None] * distance).unsqueeze(0)


class DnaBertEmbeddings(nn.Module):
    """Token + token-type embeddings, LayerNorm, dropout. No position embeddings: ALiBi places tokens."""

    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class DnaBertSelfAttention(nn.Module):
    """Fused ``Wqkv`` projection, output laid out as (t h d) like upstream."""

    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.p_dropout = cfg.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, output_attentions: bool = False):
        b, s, _ = x.shape
        q, k, v = self.Wqkv(x).view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout = self.p_dropout if self.training else 0.0
        if output_attentions:  # explicit path only when the probabilities are wanted (plots, probes)
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
            probs = scores.softmax(-1)
            out = F.dropout(probs, dropout, self.training) @ v
        else:
            out, probs = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout), None
        return out.transpose(1, 2).reshape(b, s, -1), probs


class DnaBertSelfOutput(nn.Module):
    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)  # post-LN


class DnaBertAttention(nn.Module):
    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.self = DnaBertSelfAttention(cfg)
        self.output = DnaBertSelfOutput(cfg)

    def forward(self, x, bias, output_attentions=False):
        hidden, probs = self.self(x, bias, output_attentions)
        return self.output(hidden, x), probs


class DnaBertGatedMLP(nn.Module):
    """GEGLU feed-forward: ``wo(dropout(GELU(x W_g) * (x W_v)))``, then post-LN with the residual."""

    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gated_layers = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.act = nn.GELU(approximate="none")
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated, linear = self.gated_layers(x).split(self.intermediate_size, dim=-1)
        return self.layernorm(self.wo(self.dropout(self.act(gated) * linear)) + x)


class DnaBertLayer(nn.Module):
    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.attention = DnaBertAttention(cfg)
        self.mlp = DnaBertGatedMLP(cfg)

    def forward(self, x, bias, output_attentions=False):
        x, probs = self.attention(x, bias, output_attentions)
        return self.mlp(x), probs


class DnaBertEncoder(nn.Module):
    """The layer stack and the ALiBi table, grown on demand so inputs may exceed the training length."""

    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.layer = nn.ModuleList(DnaBertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        # not persistent: a pure function of (heads, size), so checkpoints stay small and layout-exact
        self.register_buffer("alibi", alibi_bias(cfg.num_attention_heads, cfg.alibi_starting_size), persistent=False)

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        seqlen = attention_mask.shape[1]
        if seqlen > self.alibi.shape[-1]:
            self.alibi = alibi_bias(self.num_heads, seqlen).to(self.alibi.device)
        padding = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        return self.alibi[:, :, :seqlen, :seqlen].to(dtype) + padding

    def forward(self, x, attention_mask, output_attentions=False):
        bias = self.attention_bias(attention_mask, x.dtype)
        attentions = []
        for layer in self.layer:
            x, probs = layer(x, bias, output_attentions)
            attentions.append(probs)
        return x, (attentions if output_attentions else None)


class DnaBertPooler(nn.Module):
    """First ([CLS]) token -> dense -> tanh, as BERT."""

    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class DnaBertModel(nn.Module):
    """Embeddings + encoder (+ pooler). ``forward`` returns (sequence_output, pooled_or_None, attentions_or_None)."""

    def __init__(self, cfg: DnaBert2Config, add_pooling_layer: bool = True):
        super().__init__()
        self.config = cfg
        self.embeddings = DnaBertEmbeddings(cfg)
        self.encoder = DnaBertEncoder(cfg)
        self.pooler = DnaBertPooler(cfg) if add_pooling_layer else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions=False):
        if input_ids.dim() != 2:
            raise ConfigError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        vocab = self.embeddings.word_embeddings.num_embeddings
        if input_ids.numel() and (int(input_ids.max()) >= vocab or int(input_ids.min()) < 0):
            raise ConfigError(f"input_ids hold ids outside [0, {vocab}); the tokenizer does not match the model's "
                              "vocab_size: use the model's own tokenizer or raise config.vocab_size")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        x, attentions = self.encoder(x, attention_mask, output_attentions)
        pooled = self.pooler(x) if self.pooler is not None else None
        return x, pooled, attentions


class DnaBertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: DnaBert2Config):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.transform_act_fn = nn.GELU(approximate="none")
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class DnaBertLMPredictionHead(nn.Module):
    """Transform, then a decoder whose weight is the word-embedding matrix (tied) plus its own bias."""

    def __init__(self, cfg: DnaBert2Config, embedding_weight: nn.Parameter):
        super().__init__()
        self.transform = DnaBertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.decoder.weight = embedding_weight

    def forward(self, x):
        return self.decoder(self.transform(x))


class DnaBertOnlyMLMHead(nn.Module):
    def __init__(self, cfg: DnaBert2Config, embedding_weight: nn.Parameter):
        super().__init__()
        self.predictions = DnaBertLMPredictionHead(cfg, embedding_weight)

    def forward(self, x):
        return self.predictions(x)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT initialisation: normal(0, std) weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
