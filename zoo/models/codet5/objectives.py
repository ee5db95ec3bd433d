"""The paper's inputs and targets, built from token ids (pure functions, no model).

- MSP (masked span prediction): T5 span corruption at a 15% rate with span lengths U{1..5}, over
  whole words (runs of non-space characters), so a span never cuts a word into sub-tokens.
- IT (identifier tagging): y_i = 1 for every sub-token of an identifier.
- MIP (masked identifier prediction): each unique identifier gets one sentinel, reused at every
  occurrence; the target is ``<extra_id_0> name0 <extra_id_1> name1 ...``.
- Dual generation: NL->PL and PL->NL with the target language's id token first in the target.
"""

from __future__ import annotations

import bisect
import re

import numpy as np

from zoo.models.codet5.identifiers import extract_identifiers
from zoo.models.codet5.tokenizer import NUM_SENTINELS, language_token, sentinel, sentinel_ids

IGNORE = -100
_WORD = re.compile(r"\S+")


def code_features(tokenizer, codes: list[str], languages: list[str], max_length: int,
                  max_target_length: int) -> dict[str, list]:
    """Token ids of each code string plus what MSP, IT and MIP need, for ``datasets.map(batched=True)``."""
    enc = tokenizer(codes, truncation=True, max_length=max_length, return_offsets_mapping=True)
    out = {"input_ids": [], "word_ids": [], "it_labels": [], "mip_input_ids": [], "mip_labels": []}
    masked_texts, targets = [], []
    for code, language, ids, offsets in zip(codes, languages, enc["input_ids"], enc["offset_mapping"]):
        idents = extract_identifiers(code, language)
        seen_end = max((e for s, e in offsets), default=0)  # text that survived truncation
        idents = [i for i in idents if i.end <= seen_end]
        out["input_ids"].append(ids)
        out["word_ids"].append(_word_ids(code, offsets, ids, tokenizer.all_special_ids))
        out["it_labels"].append(_identifier_labels(offsets, ids, idents, tokenizer.all_special_ids))
        masked, target = _obfuscate(code[:seen_end], idents)
        masked_texts.append(masked)
        targets.append(target)
    out["mip_input_ids"] = tokenizer(masked_texts, truncation=True, max_length=max_length)["input_ids"]
    out["mip_labels"] = tokenizer(targets, truncation=True, max_length=max_target_length)["input_ids"]
    return out


def _word_ids(code: str, offsets, ids, special_ids) -> list[int]:
    """Index of the whitespace-delimited word each token starts in; -1 for specials and pure whitespace."""
    starts = [m.start() for m in _WORD.finditer(code)]
    specials = set(special_ids)
    words = []
    for (s, e), tid in zip(offsets, ids):
        piece = code[s:e]
        stripped = len(piece) - len(piece.lstrip())
        if tid in specials or stripped == len(piece):
            words.append(-1)
        else:
            words.append(bisect.bisect_right(starts, s + stripped) - 1)
    return words


def _identifier_labels(offsets, ids, idents, special_ids) -> list[int]:
    """1 for tokens overlapping an identifier (all of its sub-tokens), 0 otherwise, IGNORE for specials."""
    spans = sorted((i.start, i.end) for i in idents)
    span_starts = [s for s, _ in spans]
    specials = set(special_ids)
    labels = []
    for (s, e), tid in zip(offsets, ids):
        if tid in specials:
            labels.append(IGNORE)
            continue
        k = bisect.bisect_right(span_starts, e - 1) - 1  # last identifier starting before the token ends
        labels.append(int(k >= 0 and spans[k][1] > s))
    return labels


def _obfuscate(code: str, idents) -> tuple[str, str]:
    """MIP: replace every occurrence of the first 100 unique identifiers by their shared sentinel."""
    index: dict[str, int] = {}
    for ident in idents:
        if ident.name not in index and len(index) < NUM_SENTINELS:
            index[ident.name] = len(index)
    pieces, last = [], 0
    for ident in idents:
        if ident.name in index:
            pieces += [code[last:ident.start], sentinel(index[ident.name])]
            last = ident.end
    pieces.append(code[last:])
    # `<s0> name0<s1> name1 ...`: the space makes byte-level BPE spell each name as it appears after a
    # space in code (` first` is one token); glued to the sentinel it fell into rare pieces (`fi r st`)
    target = "".join(f"{sentinel(k)} {name}" for name, k in index.items())
    return "".join(pieces), target


def span_corrupt(ids: list[int], word_ids: list[int], sentinels: list[int], rng: np.random.Generator,
                 rate: float = 0.15, max_span: int = 5) -> tuple[list[int], list[int]]:
    """MSP: mask ``rate`` of the words in spans of U{1..max_span} words; returns (input, target) ids.

    Input keeps ``<s>``/``</s>``; each masked run becomes one sentinel, the target lists
    ``sentinel_k run_k`` for every run (T5 span corruption), ending with the input's last token.
    """
    words = sorted({w for w in word_ids if w >= 0})
    if not words:
        return list(ids), [ids[0], ids[-1]]
    first = {}
    last = {}
    for t, w in enumerate(word_ids):
        if w >= 0:
            first.setdefault(w, t)
            last[w] = t
    budget = max(1, int(round(rate * len(words))))
    masked_words: set[int] = set()
    for _ in range(10 * budget):
        if len(masked_words) >= budget:
            break
        length = int(rng.integers(1, max_span + 1))
        start = int(rng.integers(0, len(words)))
        chosen = [w for w in words[start:start + min(length, budget - len(masked_words))]]
        masked_words.update(chosen)
    mask = [False] * len(ids)
    for w in masked_words:
        for t in range(first[w], last[w] + 1):
            mask[t] = True
    # whitespace tokens between two masked words of one run are masked too (no lone-space targets)
    for t in range(1, len(ids) - 1):
        if not mask[t] and word_ids[t] < 0 and mask[t - 1]:
            j = t
            while j < len(ids) - 1 and word_ids[j] < 0 and not mask[j]:
                j += 1
            if mask[j]:
                for k in range(t, j):
                    mask[k] = True
    source, target, run = [], [ids[0]], -1
    for t, tid in enumerate(ids):
        if mask[t]:
            if t == 0 or not mask[t - 1]:
                run += 1
                if run >= len(sentinels):
                    mask[t:] = [False] * (len(ids) - t)  # out of sentinels: keep the rest visible
                    source.append(tid)
                    continue
                source.append(sentinels[run])
                target.append(sentinels[run])
            target.append(tid)
        else:
            source.append(tid)
    target.append(ids[-1])
    return source, target


def dual_target(tokenizer, target_ids: list[int], language: str) -> list[int]:
    """Dual generation: the target language's id token right after ``<s>`` (``<en>`` for NL, ``<python>``...)."""
    lang = tokenizer.convert_tokens_to_ids(language_token(language))
    return [target_ids[0], lang] + list(target_ids[1:])


__all__ = ["IGNORE", "code_features", "span_corrupt", "dual_target", "sentinel_ids"]
