"""DNABERT-2 objectives: masked language modelling and sequence classification (MCC, macro-F1, accuracy)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from zoo.core.module import OptimConfig, ZooModule
from zoo.errors import CheckpointFormatError, ConfigError, KeyMismatchError
from zoo.models.dnabert2.model import DnaBert2Config, DnaBertModel, DnaBertOnlyMLMHead, init_weights
from zoo.models.dnabert2.tokenizer import SPECIAL_TOKENS, encode_dna


def _random_ids(batch_size: int, length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (batch_size, length), generator=g)
    ids[:, 0], ids[:, -1] = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")
    return ids


class _DnaBert2Base(ZooModule):
    family = "dnabert2"

    def _build_backbone(self, config, add_pooling_layer: bool) -> DnaBert2Config:
        cfg = DnaBert2Config.coerce(config)
        self.bert = DnaBertModel(cfg, add_pooling_layer=add_pooling_layer)
        self.vocab_size_limit = cfg.vocab_size
        return cfg

    def encode(self, sequences: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Raw DNA strings -> a padded batch for ``forward`` (uses the attached tokenizer)."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer attached; load it with zoo.from_pretrained or "
                              "call model.attach_tokenizer(tokenizer) first")
        ids = encode_dna(self.tokenizer, list(sequences), max_length)["input_ids"]
        pad = SPECIAL_TOKENS.index("[PAD]")
        input_ids = torch.full((len(ids), max(map(len, ids))), pad, dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
        return {"input_ids": input_ids.to(self.device), "attention_mask": (input_ids != pad).long().to(self.device)}

    def _check_batch(self, batch: dict) -> None:
        if not isinstance(batch, dict) or "input_ids" not in batch:
            raise ConfigError("a DNABERT-2 batch is a dict with 'input_ids' (and 'attention_mask'); "
                              "build one with model.encode(['ACGT...'])")

    def hidden_states(self, batch: dict, output_attentions: bool = False):
        self._check_batch(batch)
        return self.bert(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                         output_attentions=output_attentions)


class DnaBert2ForMaskedLM(_DnaBert2Base):
    """DNABERT-2 pre-training: the encoder with a tied MLM head."""

    pipeline_tag = "fill-mask"
    keep_in_full_precision = ("cls.predictions.decoder",)

    def __init__(self, config: DnaBert2Config | None = None, add_pooling_layer: bool = False,
                 optim: OptimConfig | None = None):
        super().__init__(optim=optim)
        cfg = self._build_backbone(config, add_pooling_layer)
        self.cls = DnaBertOnlyMLMHead(cfg, self.bert.embeddings.word_embeddings.weight)
        init_weights(self, cfg.initializer_range)
        self.val_accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=cfg.vocab_size)

    def forward(self, batch: dict) -> torch.Tensor:
        """Vocabulary logits [batch, length, vocab]."""
        return self.cls(self.hidden_states(batch)[0])

    def mlm_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "labels" not in batch:
            raise ConfigError("MLM batches need 'labels' (-100 where not masked); use DnaPretrainData's collate "
                              "or zoo.models.dnabert2.data.mask_tokens")
        hidden = self.hidden_states(batch)[0]
        labels = batch["labels"]
        targets = labels != -100
        # as upstream (MosaicBERT), only masked positions go through the vocabulary head: same loss, far less compute
        logits = self.cls(hidden[targets])
        # BERT masked-LM loss (Devlin et al. 2019 §3.1 "Masked LM"; DNABERT-2 §3.2): CE over masked tokens only
        loss = F.cross_entropy(logits, labels[targets])
        return loss, logits

    def training_step(self, batch, batch_idx):
        loss, _ = self.mlm_loss(batch)
        self.log_metrics("train", {"loss": loss})
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits = self.mlm_loss(batch)
        self.val_accuracy(logits.argmax(-1), batch["labels"][batch["labels"] != -100])
        self.log_metrics("val", {"loss": loss, "perplexity": loss.exp(), "accuracy": self.val_accuracy},
                         batch_size=batch["input_ids"].shape[0])

    test_step = validation_step

    def example_batch(self, batch_size: int = 2) -> dict:
        from zoo.models.dnabert2.data import mask_tokens

        ids = _random_ids(batch_size, 16, self.bert.config.vocab_size)
        masked, labels = mask_tokens(ids, self.bert.config.vocab_size, 0.3, generator=torch.Generator().manual_seed(0))
        return {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}


class DnaBert2ForSequenceClassification(_DnaBert2Base):
    """Fine-tuning head: pooled [CLS] (dense + tanh) -> dropout -> linear, cross-entropy.

    ``init_from`` names a pre-trained DNABERT-2 checkpoint (a Lightning ``.ckpt`` or a zoo hub
    folder) whose encoder and tokenizer are copied in at construction; afterwards the weights live
    in this model's own checkpoints, so the saved config records ``init_from`` only in the run record.
    """

    pipeline_tag = "text-classification"

    def __init__(self, config: DnaBert2Config | None = None, num_labels: int = 2,
                 classifier_dropout: float | None = None, init_from: str | None = None,
                 optim: OptimConfig | None = None):
        super().__init__(optim=optim)
        if num_labels < 2:
            raise ConfigError(f"num_labels={num_labels}: classification needs at least 2 classes")
        cfg = self._build_backbone(config, add_pooling_layer=True)
        self.num_labels = num_labels
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self, cfg.initializer_range)
        self.metrics = nn.ModuleDict({
            stage: torchmetrics.MetricCollection({
                "matthews_correlation": torchmetrics.MatthewsCorrCoef(task="multiclass", num_classes=num_labels),
                "f1": torchmetrics.F1Score(task="multiclass", num_classes=num_labels, average="macro"),
                "accuracy": torchmetrics.Accuracy(task="multiclass", num_classes=num_labels),
            }) for stage in ("val", "test")
        })
        if init_from:
            load_encoder(self, init_from)

    def _after_init_args_captured(self, init_args: dict[str, Any]) -> None:
        if init_args.get("init_from"):  # weights are now ours: a reload must not need that file again
            self._run_record["init_from"] = init_args["init_from"]
            init_args["init_from"] = None
        super()._after_init_args_captured(init_args)

    def forward(self, batch: dict) -> torch.Tensor:
        """Class logits [batch, num_labels]."""
        _, pooled, _ = self.hidden_states(batch)
        return self.classifier(self.dropout(pooled))

    def classification_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch.get("labels") if isinstance(batch, dict) else None
        if labels is None:
            raise ConfigError("classification batches need 'labels'; use DnaClassificationData's collate")
        if labels.numel() and (int(labels.max()) >= self.num_labels or int(labels.min()) < 0):
            raise ConfigError(f"labels go up to {int(labels.max())} but the model has num_labels={self.num_labels}; "
                              f"set model.init_args.num_labels={int(labels.max()) + 1}")
        logits = self(batch)
        return F.cross_entropy(logits, labels), logits  # fine-tuning CE on pooled [CLS] (paper §4, GUE)

    def training_step(self, batch, batch_idx):
        loss, _ = self.classification_loss(batch)
        self.log_metrics("train", {"loss": loss})
        return loss

    def _evaluate(self, stage: str, batch) -> None:
        loss, logits = self.classification_loss(batch)
        metrics = self.metrics[stage]
        metrics.update(logits.argmax(-1), batch["labels"])
        self.log_metrics(stage, {"loss": loss, **metrics}, batch_size=batch["labels"].shape[0])

    def validation_step(self, batch, batch_idx):
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx):
        self._evaluate("test", batch)

    def example_batch(self, batch_size: int = 2) -> dict:
        ids = _random_ids(batch_size, 16, self.bert.config.vocab_size)
        mask = torch.ones_like(ids)
        mask[1:, 12:] = 0  # padded rows exercise the padding bias
        ids[1:, 12:] = SPECIAL_TOKENS.index("[PAD]")
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(batch_size) % self.num_labels}


def _read_pretrained(path: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """State dict and tokenizer of a Lightning checkpoint or a zoo hub folder (no pickle execution)."""
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.exists():
            raise CheckpointFormatError(f"{path} has no model.safetensors; pass a zoo hub folder or a .ckpt file")
        from safetensors.torch import load_file

        tokenizer = None
        if (path / "tokenizer").is_dir():
            tokenizer = ZooModule.load_tokenizer(path / "tokenizer")
        return load_file(str(weights)), tokenizer
    if not path.exists():
        raise ConfigError(f"init_from={str(path)!r} does not exist; point it at the pre-training run's .ckpt "
                          "or an exported hub folder")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint:
        raise CheckpointFormatError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    tokenizer = None
    if checkpoint.get("zoo_tokenizer"):
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in checkpoint["zoo_tokenizer"].items():
                (Path(tmp) / Path(name).name).write_text(text, encoding="utf-8")
            tokenizer = ZooModule.load_tokenizer(tmp)
    return checkpoint["state_dict"], tokenizer


def load_encoder(module: _DnaBert2Base, source: str | os.PathLike) -> None:
    """Copy a pre-trained encoder (``bert.embeddings`` + ``bert.encoder``) and its tokenizer into ``module``.

    Strict: every encoder tensor must be present with the same shape; the pooler and the MLM head are
    not part of the encoder and are ignored.
    """
    state, tokenizer = _read_pretrained(Path(source).expanduser())
    wanted = {k: v for k, v in module.state_dict().items() if k.startswith(("bert.embeddings.", "bert.encoder."))}
    found = {k: v for k, v in state.items() if k.startswith(("bert.embeddings.", "bert.encoder."))}
    missing = sorted(set(wanted) - set(found))
    unexpected = sorted(set(found) - set(wanted))
    mismatched = sorted(f"{k}: {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in wanted.items()
                        if k in found and found[k].shape != v.shape)
    if missing or unexpected or mismatched:
        raise KeyMismatchError(
            f"{source} does not hold an encoder of this shape (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"mis-shaped {mismatched[:5]}); set model.init_args.config to the pre-training run's config",
            missing, unexpected, mismatched)
    module.load_state_dict(found, strict=False)
    if tokenizer is not None:
        module.attach_tokenizer(tokenizer)

