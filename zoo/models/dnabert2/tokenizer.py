"""DNA tokenizers with one interface: DNABERT-2's BPE, and k-mers (overlapping or not) for comparison.

Every tokenizer is a ``transformers.PreTrainedTokenizerFast`` with the specials
``[UNK] [CLS] [SEP] [PAD] [MASK]`` (ids 0-4, upstream's order) and ``[CLS] $A [SEP]`` framing.
``encode_dna(tokenizer, sequences)`` is the one entry point: overlapping k-mers cannot be cut by a
regex, so their text is expanded to space-separated k-mers first; the scheme travels in the
tokenizer's own config (``dna_scheme``, ``dna_k``) and survives save/load.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import Literal

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from zoo.errors import ConfigError

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
Scheme = Literal["bpe", "kmer", "kmer_overlap"]
_NOT_ACGTN = re.compile(r"[^ACGTN]")


def clean_dna(sequence: str) -> str:
    """Upper-case; any IUPAC ambiguity code becomes N (BPE and k-mer vocabularies know only ACGTN)."""
    return _NOT_ACGTN.sub("N", sequence.upper())


def _wrap(tok: Tokenizer, scheme: Scheme, k: int = 0) -> PreTrainedTokenizerFast:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        mask_token="[MASK]", dna_scheme=scheme, dna_k=k, model_max_length=1_000_000,
    )


def train_bpe_tokenizer(sequences: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
                        ) -> PreTrainedTokenizerFast:
    """DNABERT-2's tokenizer: byte-pair merges learned on DNA text (paper §3.1)."""
    if vocab_size <= len(SPECIAL_TOKENS) + 5:
        raise ConfigError(f"BPE vocab_size={vocab_size} leaves no room for merges; use >= 64 (the paper uses 4096)")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), initial_alphabet=list("ACGTN"),
                                  show_progress=False)
    tok.train_from_iterator((clean_dna(s) for s in sequences), trainer=trainer)
    return _wrap(tok, "bpe")


def kmer_tokenizer(k: int = 6, overlapping: bool = False) -> PreTrainedTokenizerFast:
    """Fixed vocabulary of all 4^k k-mers. Non-overlapping: the sequence is cut every k bases
    (a shorter tail k-mer or one with N is [UNK]); overlapping (DNABERT-1): one token per position."""
    if not 1 <= k <= 8:
        raise ConfigError(f"k={k} is outside 1..8 (4^k vocabulary); DNABERT used k=3..6")
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for kmer in itertools.product("ACGT", repeat=k):
        vocab["".join(kmer)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    if overlapping:
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(f".{{1,{k}}}"), behavior="isolated")
    return _wrap(tok, "kmer_overlap" if overlapping else "kmer", k)


def make_tokenizer(scheme: Scheme, sequences: Iterable[str] = (), vocab_size: int = 4096, k: int = 6):
    if scheme == "bpe":
        return train_bpe_tokenizer(sequences, vocab_size)
    if scheme in ("kmer", "kmer_overlap"):
        return kmer_tokenizer(k, overlapping=scheme == "kmer_overlap")
    raise ConfigError(f"unknown DNA tokenizer scheme {scheme!r}; use 'bpe', 'kmer' or 'kmer_overlap'")


def scheme_of(tokenizer) -> tuple[str, int]:
    """(scheme, k) of a tokenizer; upstream DNABERT-2 tokenizers carry no scheme and are BPE."""
    kwargs = getattr(tokenizer, "init_kwargs", {}) or {}
    return kwargs.get("dna_scheme", "bpe"), int(kwargs.get("dna_k", 0) or 0)


def dna_text(tokenizer, sequence: str) -> str:
    """The text a tokenizer expects for a raw DNA sequence."""
    scheme, k = scheme_of(tokenizer)
    sequence = clean_dna(sequence)
    if scheme == "kmer_overlap":
        return " ".join(sequence[i: i + k] for i in range(max(1, len(sequence) - k + 1)))
    return sequence


def encode_dna(tokenizer, sequences: list[str], max_length: int | None = None) -> dict[str, list[list[int]]]:
    """Token ids (with [CLS]/[SEP]) for raw DNA strings, truncated to ``max_length`` tokens."""
    if isinstance(sequences, str):
        raise ConfigError("encode_dna takes a list of sequences; wrap a single sequence as [sequence]")
    texts = [dna_text(tokenizer, s) for s in sequences]
    out = tokenizer(texts, truncation=max_length is not None, max_length=max_length, return_attention_mask=False)
    return {"input_ids": out["input_ids"]}
