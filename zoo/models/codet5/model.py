"""CodeT5's architecture: a plain T5 encoder-decoder (no delta) plus the IT head used in pre-training."""

from __future__ import annotations

from torch import nn
from transformers import T5Config, T5ForConditionalGeneration


def t5_config(vocab_size: int, d_model: int, d_ff: int, d_kv: int, num_layers: int, num_decoder_layers: int,
              num_heads: int, relative_attention_num_buckets: int, relative_attention_max_distance: int,
              dropout_rate: float, layer_norm_epsilon: float, feed_forward_proj: str, tie_word_embeddings: bool,
              pad_token_id: int, eos_token_id: int, bos_token_id: int, decoder_start_token_id: int) -> T5Config:
    return T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_layers=num_layers,
                    num_decoder_layers=num_decoder_layers, num_heads=num_heads,
                    relative_attention_num_buckets=relative_attention_num_buckets,
                    relative_attention_max_distance=relative_attention_max_distance, dropout_rate=dropout_rate,
                    layer_norm_epsilon=layer_norm_epsilon, feed_forward_proj=feed_forward_proj,
                    tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                    bos_token_id=bos_token_id, decoder_start_token_id=decoder_start_token_id, use_cache=True)


class IdentifierTagger(nn.Module):
    """IT head: one logit per encoder state, p_i = sigmoid(w h_i + b) (the paper's "linear layer + sigmoid")."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, 1)

    def forward(self, hidden):
        return self.proj(hidden).squeeze(-1)


def build_model(config: T5Config) -> tuple[T5ForConditionalGeneration, IdentifierTagger]:
    return T5ForConditionalGeneration(config), IdentifierTagger(config.d_model)
