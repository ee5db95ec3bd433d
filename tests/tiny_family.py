"""A tiny family defined inside tests/ that exercises the core before (and beside) the real families.

A bag-of-tokens classifier over Python standard-library module names (label: private module or
not), with a WordLevel tokenizer trained by its DataModule, so tokenizer hand-over, saving and
loading are exercised too. Importing this module registers it as ``tinytest-tiny``.
"""

from __future__ import annotations

import sys

import datasets
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from zoo.core.data import ZooDataModule, pad_sequences
from zoo.core.module import OptimConfig, ZooModule
from zoo.registry import ModelEntry, Paper, register, register_datamodule


class TinyClassifier(ZooModule):
    family = "tinytest"
    pipeline_tag = "text-classification"

    def __init__(self, vocab_size: int = 64, hidden: int = 16, num_labels: int = 2, optim: OptimConfig | None = None):
        super().__init__(optim=optim)
        self.vocab_size_limit = vocab_size
        self.embed = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.proj = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, batch):
        ids = batch["input_ids"]
        mask = (ids != 0).unsqueeze(-1).float()
        pooled = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(torch.tanh(self.proj(pooled)))

    def _step(self, batch, stage):
        logits = self(batch)
        loss = nn.functional.cross_entropy(logits, batch["labels"])
        acc = (logits.argmax(-1) == batch["labels"]).float().mean()
        self.log_metrics(stage, {"loss": loss, "accuracy": acc}, batch_size=len(logits))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def example_batch(self, batch_size: int = 2):
        g = torch.Generator().manual_seed(0)
        return {"input_ids": torch.randint(1, self.vocab_size_limit, (batch_size, 6), generator=g),
                "labels": torch.arange(batch_size) % 2}


class TinyData(ZooDataModule):
    dataset_name = "Python standard-library module names (embedded)"
    required_columns = ("text", "label")

    def __init__(self, vocab_size: int = 64, source: str = "embedded", batch_size: int = 16, seed: int = 0,
                 limit: int | None = None):
        super().__init__(source=source, batch_size=batch_size, seed=seed, limit=limit, max_length=16)
        self.vocab_size = vocab_size

    def build_embedded(self):
        names = sorted(sys.stdlib_module_names)
        return datasets.Dataset.from_dict({"text": [" ".join(n) for n in names],
                                           "label": [int(n.startswith("_")) for n in names], "group": names})

    def build_tokenizer(self, train):
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(vocab_size=self.vocab_size, special_tokens=["[PAD]", "[UNK]"])
        tok.train_from_iterator(train["text"], trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")

    def tokenize(self, batch):
        enc = self.tokenizer(batch["text"], truncation=True, max_length=self.max_length)
        return {"input_ids": enc["input_ids"], "labels": batch["label"]}

    def collate(self, rows):
        return {"input_ids": pad_sequences([r["input_ids"] for r in rows], 0),
                "labels": torch.tensor([r["labels"] for r in rows])}


PAPER = Paper(title="A tiny test family", arxiv="0000.00000", bibtex="@misc{tinytest, title={Tiny}}")
register(ModelEntry(name="tinytest-tiny", family="tinytest", variant="tiny", module_class=TinyClassifier,
                    datamodule_class=TinyData, config={"hidden": 16}, paper=PAPER, license="apache-2.0",
                    tags=("test",), default=True, config_file="tests/data/tinytest.yaml"))
register_datamodule("tinytest_names", TinyData)
