"""Masks for RetroMAE / DupMAE pre-training, built on padded id tensors.

Shared by the data collator and ``DupMAE.example_batch`` so that both produce the same batch
layout. Whole-word masking works on ``word_ids`` (one word index per token, -1 for special and
pad tokens), which fast tokenizers give through ``BatchEncoding.word_ids``.
"""

from __future__ import annotations

import torch

IGNORE = -100


def _word_draw(word_ids: torch.Tensor, prob: float, generator: torch.Generator, rows: int = 1) -> torch.Tensor:
    """[B, rows, L] bool: True where the token's word was drawn (one draw per word, so whole words)."""
    batch, length = word_ids.shape
    n_words = int(word_ids.max().item()) + 1 if word_ids.numel() else 0
    draws = torch.rand(batch, rows, max(n_words, 1), generator=generator) < prob
    index = word_ids.clamp(min=0).unsqueeze(1).expand(batch, rows, length)
    return torch.gather(draws, 2, index) & (word_ids >= 0).unsqueeze(1)


def encoder_mask(
    input_ids: torch.Tensor, word_ids: torch.Tensor, mask_token_id: int, vocab_size: int,
    ratio: float, generator: torch.Generator, special_ids: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking at ``ratio``, then BERT's 80% [MASK] / 10% random / 10% kept.

    Returns (masked input ids, labels with -100 outside masked positions). At least one word per
    row is masked so every row contributes to L_enc.
    """
    chosen = _word_draw(word_ids, ratio, generator)[:, 0]
    ordinary = word_ids >= 0
    empty = ~chosen.any(1) & ordinary.any(1)
    if empty.any():  # force the first ordinary token's word of rows that drew nothing
        first = ordinary.float().argmax(1)
        first_word = word_ids.gather(1, first[:, None])
        chosen |= empty[:, None] & (word_ids == first_word)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (action < 0.8)] = mask_token_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    for sid in special_ids:  # a random replacement must stay an ordinary token
        random_ids[random_ids == sid] = mask_token_id
    masked[swap] = random_ids[swap]
    return masked, labels


def decoder_visibility(word_ids: torch.Tensor, attention_mask: torch.Tensor, ratio: float,
                       generator: torch.Generator) -> torch.Tensor:
    """[B, L, L] bool: which key/value positions each decoder row i may attend to.

    RetroMAE's position-specific mask: row i sees a random set of words (each hidden with
    probability ``ratio``, drawn afresh for every row), never itself; key 0 holds the sentence
    embedding h_CLS and is visible to every row but row 0; pads are never visible.
    """
    batch, length = word_ids.shape
    hidden = _word_draw(word_ids, ratio, generator, rows=length)
    visible = ~hidden & attention_mask.bool().unsqueeze(1)
    visible &= (word_ids >= 0).unsqueeze(1)  # special tokens other than [CLS] carry no content
    visible[:, :, 0] = True
    eye = torch.eye(length, dtype=torch.bool).unsqueeze(0)
    visible &= ~eye
    return visible


def decoder_labels(input_ids: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """Every ordinary token is a target of the [CLS] decoder; [CLS]/[SEP]/pads are ignored."""
    return torch.where(word_ids >= 0, input_ids, torch.full_like(input_ids, IGNORE))


def bag_of_words(input_ids: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """[B, U] distinct ordinary vocabulary ids per row, padded with -1 (the BoW targets, weight 1/n each)."""
    rows = [torch.unique(ids[w >= 0]) for ids, w in zip(input_ids, word_ids)]
    width = max((len(r) for r in rows), default=1) or 1
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def pretrain_batch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor, *, mask_token_id: int,
    vocab_size: int, encoder_ratio: float = 0.3, decoder_ratio: float = 0.5, seed: int = 0,
    special_ids: tuple[int, ...] = (),
) -> dict[str, torch.Tensor]:
    """Everything the three pre-training objectives need for one batch."""
    generator = torch.Generator().manual_seed(seed)
    masked, labels = encoder_mask(input_ids, word_ids, mask_token_id, vocab_size, encoder_ratio, generator,
                                  special_ids)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "encoder_input_ids": masked,
        "labels": labels,
        "decoder_visible": decoder_visibility(word_ids, attention_mask, decoder_ratio, generator),
        "decoder_labels": decoder_labels(input_ids, word_ids),
        "bow_ids": bag_of_words(input_ids, word_ids),
    }
