"""Metrics of the paper's evaluation: CodeXGLUE smoothed BLEU-4 and exact match.

Corpus BLEU-4 is ``torchmetrics.text.BLEUScore``; the two below are what torchmetrics lacks.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch
from torchmetrics import Metric

_TOKEN = re.compile(r"[\w]+|[^\s\w]")


def codexglue_tokens(text: str) -> list[str]:
    """CodeXGLUE's normalisation: lowercase, words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def smoothed_sentence_bleu(hypothesis: str, reference: str, max_order: int = 4) -> float:
    """CodeXGLUE ``smooth_bleu``: add-one smoothing on 2..4-gram precisions, smoothed brevity penalty, in [0, 1]."""
    hyp, ref = codexglue_tokens(hypothesis), codexglue_tokens(reference)
    log_bleu = 0.0
    for n in range(1, max_order + 1):
        hyp_ngrams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        correct = sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items())
        guess = max(len(hyp) - n + 1, 0)
        add = 1 if n > 1 else 0
        log_bleu += math.log(correct + add + 1e-300) - math.log(guess + add + 1e-300)
    brevity = min(0.0, 1.0 - (len(ref) + 1) / (len(hyp) + 1))
    return math.exp(log_bleu / max_order + brevity)


class SmoothedBLEU4(Metric):
    """Mean per-sentence smoothed BLEU-4 x 100 (the CodeXGLUE code-to-text metric)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references; pass one each")
        for hyp, ref in zip(predictions, references):
            self.total += smoothed_sentence_bleu(hyp, ref)
        self.count += len(predictions)

    def compute(self) -> torch.Tensor:
        return (100.0 * self.total / self.count.clamp(min=1)).float()


class ExactMatch(Metric):
    """Fraction of predictions equal to their reference after whitespace normalisation."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predictions: list[str], references: list[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references; pass one each")
        self.correct += sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references))
        self.count += len(predictions)

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.count.clamp(min=1)
