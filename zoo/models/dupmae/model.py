"""DupMAE / RetroMAE architecture: a BERT MLM encoder plus the one-layer enhanced [CLS] decoder.

The encoder is transformers' ``BertForMaskedLM`` (the upstream checkpoints use this exact layout).
What the papers add, and what is written here:

- ``EnhancedDecoder``: one transformer layer whose queries and keys/values are separate streams
  (queries = h_CLS + position, keys/values = [h_CLS; token embeddings]) under a per-row attention
  mask. transformers 5's ``BertModel`` takes no [B, L, L] mask, so the mask is built here and the
  layer reuses ``BertAttention`` in cross-attention mode, ``BertIntermediate`` and ``BertOutput``.
- ``represent``: the retrieval vectors: [CLS], mean pooling, and the ordinary-token (OT) sparse
  vector = max over ordinary positions of log(1 + ReLU(W h_i)) over the vocabulary (SPLADE-style).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput


class EnhancedDecoder(nn.Module):
    """RetroMAE's enhanced decoding layer: query stream attends to the key/value stream."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """queries, keys_values: [B, L, H]; visible: [B, L, L] bool (row = query position)."""
        additive = torch.zeros(visible.shape, dtype=queries.dtype, device=queries.device)
        additive = additive.masked_fill(~visible, torch.finfo(queries.dtype).min).unsqueeze(1)
        attended, _ = self.attention(queries, encoder_hidden_states=keys_values, encoder_attention_mask=additive)
        return self.output(self.intermediate(attended), attended)


def ordinary_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: attended positions other than [CLS] (first) and [SEP] (last attended).

    Assumes BERT's ``[CLS] ... [SEP]`` layout, which every tokenizer of this family produces.
    """
    mask = attention_mask.bool().clone()
    mask[:, 0] = False
    last = attention_mask.long().sum(1) - 1
    mask[torch.arange(mask.shape[0], device=mask.device), last.clamp(min=0)] = False
    return mask


class DupMAEModel(nn.Module):
    """BertForMaskedLM encoder (+ enhanced decoder when pre-training with RetroMAE / DupMAE)."""

    def __init__(self, config: BertConfig, with_decoder: bool, dense_dim: int | None = None):
        super().__init__()
        self.config = config
        self.encoder = BertForMaskedLM(config)
        self.decoder = EnhancedDecoder(config) if with_decoder else None
        # optional learned dense reduction of h_CLS for the unified representation (trained when fine-tuning)
        self.dense_reduction = nn.Linear(config.hidden_size, dense_dim) if dense_dim else None

    # ------------------------------------------------------------------ encoder
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states [B, L, H], MLM logits [B, L, V])."""
        hidden = self.encoder.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, self.encoder.cls(hidden)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.encoder.cls(hidden)

    # ------------------------------------------------------------------ decoder
    def decode(self, h_cls: torch.Tensor, input_ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Decoder logits [B, L, V] for reconstructing every token from h_CLS."""
        if self.decoder is None:
            raise RuntimeError("this model was built without the [CLS] decoder (objective 'mlm' or 'contrastive')")
        embeddings = self.encoder.bert.embeddings
        length = input_ids.shape[1]
        positions = embeddings.position_ids[:, :length]
        token_type = embeddings.token_type_embeddings(torch.zeros_like(positions))
        # queries: LayerNorm(h_CLS + p_i + type) for every position i
        queries = embeddings.LayerNorm(h_cls.unsqueeze(1) + embeddings.position_embeddings(positions) + token_type)
        queries = embeddings.dropout(queries)
        # keys/values: [h_CLS ; Emb(x_2..x_L)] with positions, the original (unmasked) tokens
        keys_values = torch.cat([h_cls.unsqueeze(1), embeddings(input_ids=input_ids)[:, 1:]], dim=1)
        return self.lm_head(self.decoder(queries, keys_values, visible))

    # ------------------------------------------------------------------ retrieval vectors
    def represent(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The retrieval vectors of a batch: ``cls`` [B, H or dense_dim], ``mean`` [B, H], ``ot`` [B, V]."""
        hidden, logits = self.encode(input_ids, attention_mask)
        cls = hidden[:, 0]
        if self.dense_reduction is not None:
            cls = self.dense_reduction(cls)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        ordinary = ordinary_positions(attention_mask).unsqueeze(-1)
        # ReLU makes every entry >= 0, so zero is a safe value for excluded positions under max
        ot = (torch.log1p(torch.relu(logits)) * ordinary).amax(1)
        return {"cls": cls, "mean": mean, "ot": ot}


def bert_config(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
                max_position_embeddings: int, dropout: float) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, pad_token_id=0,
    )
