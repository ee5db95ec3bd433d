"""ZooModule: the LightningModule every family subclasses.

It captures the typed init args (they are the checkpoint's config), builds AdamW with warm-up and
linear/cosine decay from one ``OptimConfig``, logs metrics as ``train/…``, ``val/…``, ``test/…``
with Hugging Face metric ids, carries the tokenizer inside Lightning checkpoints, and records
what the card needs (wall time, hardware, steps).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from zoo.core.init_args import CapturesInitArgs
from zoo.errors import ConfigError

STAGE_PREFIX = {"fit": "train", "train": "train", "validate": "val", "val": "val", "test": "test", "predict": "predict"}


@dataclasses.dataclass
class OptimConfig:
    """AdamW + schedule. ``warmup`` < 1 is a fraction of the run, >= 1 a number of steps."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup: float = 0.0
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0

    @classmethod
    def coerce(cls, value: "OptimConfig | Mapping[str, Any] | None") -> "OptimConfig":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ConfigError(f"unknown optimizer setting(s) {sorted(unknown)}; known: "
                                  f"{[f.name for f in dataclasses.fields(cls)]}")
            return cls(**{k: tuple(v) if k == "betas" else v for k, v in value.items()})
        raise ConfigError(f"optim must be an OptimConfig or a mapping, got {type(value).__name__}")

    def warmup_steps(self, total_steps: int) -> int:
        return int(self.warmup * total_steps) if self.warmup < 1 else int(self.warmup)


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the base lr at a step: linear warm-up, then linear / cosine decay to min_lr_ratio."""
    warmup = cfg.warmup_steps(total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        decay = 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay

    return factor


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norms and embeddings' 1-D tensors are not weight-decayed (BERT/T5 practice)."""
    return param.ndim < 2 or name.endswith(".bias")


def hardware_description() -> dict[str, Any]:
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "accelerator": "cpu"}
    if torch.cuda.is_available():
        info.update(accelerator="cuda", gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
    return info


class ZooModule(CapturesInitArgs, pl.LightningModule):
    """Base of every family's LightningModule.

    Subclasses call ``super().__init__(optim=optim)`` first, build their layers, and implement:

    - ``forward(batch)``: deterministic outputs (a tensor or a dict of tensors) in eval mode;
    - ``training_step`` / ``validation_step``: log through ``self.log_metrics(stage, {...})``;
    - ``example_batch(batch_size)``: a small valid batch, used by the registry-wide tests.

    Every ``__init__`` argument must be typed and JSON-serialisable; they are captured
    automatically and become ``config.json`` ``init_args`` and the checkpoint's hyperparameters.
    """

    #: the family name, set by each family's module class
    family: str = ""
    #: Hugging Face ``pipeline_tag`` for the card
    pipeline_tag: str | None = None
    #: names of Linear layers that ``quantize=`` leaves in full precision (e.g. the output head)
    keep_in_full_precision: tuple[str, ...] = ()

    def __init__(self, optim: OptimConfig | None = None):
        super().__init__()
        self.optim = OptimConfig.coerce(optim)
        self.tokenizer = None
        self._run_record: dict[str, Any] = {"wall_time_s": 0.0}
        self._fit_started: float | None = None

    def _after_init_args_captured(self, init_args: dict[str, Any]) -> None:
        hparams = dict(init_args)
        given = _given_hyperparameters.get()
        if given is not None:  # built by LightningCLI: keep its keys so `--ckpt_path` re-parsing works
            hparams.update({k: given[k] for k in ("_class_path", "_instantiator") if k in given})
            hparams.setdefault("_class_path", f"{type(self).__module__}.{type(self).__qualname__}")
        self.save_hyperparameters(hparams, logger=True)

    # ------------------------------------------------------------------ batches and tests
    def example_batch(self, batch_size: int = 2) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement example_batch()")

    def log_metrics(self, stage: str, metrics: Mapping[str, Any], **kwargs) -> None:
        """Log ``{"loss": x, "bleu": y}`` as ``train/loss``, ``val/bleu``... (HF metric ids)."""
        prefix = STAGE_PREFIX.get(stage, stage)
        on_step = kwargs.pop("on_step", prefix == "train")
        on_epoch = kwargs.pop("on_epoch", prefix != "train")
        prog_bar = kwargs.pop("prog_bar", ("loss",))
        kwargs.setdefault("batch_size", 1)
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, on_step=on_step, on_epoch=on_epoch, prog_bar=name in prog_bar, **kwargs)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": self.optim.weight_decay},
            {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=self.optim.lr, betas=tuple(self.optim.betas), eps=self.optim.eps
        )
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        if not math.isfinite(total):
            raise ConfigError("the lr schedule needs a finite run: set trainer.max_steps or trainer.max_epochs")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.optim, int(total)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ tokenizer
    def attach_tokenizer(self, tokenizer) -> None:
        """Give the model the tokenizer its embeddings were sized for; it is saved with it."""
        size = getattr(self, "vocab_size_limit", None)
        if size is not None and tokenizer is not None and len(tokenizer) > size:
            raise ConfigError(
                f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {size} rows; "
                f"set the model's vocab_size >= {len(tokenizer)}"
            )
        self.tokenizer = tokenizer

    @classmethod
    def load_tokenizer(cls, folder: str | os.PathLike):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)

    def save_tokenizer(self, folder: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(str(folder))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if self.tokenizer is None and getattr(datamodule, "tokenizer", None) is not None:
            self.attach_tokenizer(datamodule.tokenizer)

    # ------------------------------------------------------------------ checkpoints and run record
    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self) -> None:
        if self._fit_started is not None:
            self._run_record["wall_time_s"] += time.perf_counter() - self._fit_started
            self._fit_started = None

    def run_record(self) -> dict[str, Any]:
        """What the card reports about the run that produced these weights."""
        record = dict(self._run_record)
        if self._fit_started is not None:
            record["wall_time_s"] += time.perf_counter() - self._fit_started
        trainer = self._trainer
        if trainer is not None:
            record.update(global_step=int(trainer.global_step), epochs=int(trainer.current_epoch),
                          precision=str(trainer.precision), max_steps=int(trainer.max_steps),
                          accumulate_grad_batches=int(trainer.accumulate_grad_batches))
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is not None and hasattr(datamodule, "describe"):
                record["data"] = datamodule.describe()
                record.setdefault("batch_size", getattr(datamodule, "batch_size", None))
        record.setdefault("hardware", hardware_description())
        return record

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["zoo_run"] = self.run_record()
        checkpoint["zoo_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        if self.tokenizer is not None:
            with tempfile.TemporaryDirectory() as tmp:
                self.save_tokenizer(tmp)
                checkpoint["zoo_tokenizer"] = {
                    p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()
                }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._run_record = dict(checkpoint.get("zoo_run", self._run_record))
        files = checkpoint.get("zoo_tokenizer")
        if files and self.tokenizer is None:
            with tempfile.TemporaryDirectory() as tmp:
                for name, text in files.items():
                    (Path(tmp) / Path(name).name).write_text(text, encoding="utf-8")
                self.tokenizer = self.load_tokenizer(tmp)
