"""CodeT5Module: identifier-aware denoising pre-training (MSP, IT, MIP), dual generation, fine-tuning.

Each batch carries ``objective``: ``msp``, ``mip``, ``dual`` and ``seq2seq`` are sequence-to-sequence
(decoder cross-entropy), ``it`` is token tagging on the encoder. Evaluation batches of the
pre-training data (``objective="all"``) hold one sub-batch per objective so one pass measures
MSP accuracy, MIP exact match and IT F1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy
from torchmetrics.text import BLEUScore

from zoo.core.module import OptimConfig, ZooModule
from zoo.errors import ConfigError
from zoo.models.codet5.metrics import ExactMatch, SmoothedBLEU4
from zoo.models.codet5.model import build_model, t5_config
from zoo.models.codet5.objectives import IGNORE
from zoo.models.codet5.tokenizer import NUM_SENTINELS

SEQ2SEQ = ("msp", "mip", "dual", "seq2seq")
OBJECTIVES = SEQ2SEQ + ("it",)


class CodeT5Module(ZooModule):
    """CodeT5 (Wang et al., 2021) on transformers' ``T5ForConditionalGeneration``.

        >>> model = CodeT5Module(vocab_size=512, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)
        >>> out = model(model.example_batch(2))      # {"logits": [B, T, V], "it_logits": [B, S]}
    """

    family = "codet5"
    pipeline_tag = "text2text-generation"
    keep_in_full_precision = ("model.lm_head", "it_head")

    def __init__(
        self,
        vocab_size: int = 32100,
        d_model: int = 512,
        d_ff: int = 2048,
        d_kv: int = 64,
        num_layers: int = 6,
        num_decoder_layers: int | None = None,
        num_heads: int = 8,
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        dropout_rate: float = 0.1,
        layer_norm_epsilon: float = 1e-6,
        feed_forward_proj: str = "relu",
        tie_word_embeddings: bool = True,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 0,
        num_beams: int = 10,
        max_target_length: int = 128,
        generate_in_validation: bool = True,
        optim: OptimConfig | None = None,
    ):
        super().__init__(optim=optim)
        if vocab_size < NUM_SENTINELS + 5:
            raise ConfigError(f"vocab_size={vocab_size} cannot hold the 5 specials and 100 sentinels; use >= 105")
        if not tie_word_embeddings:
            raise ConfigError("tie_word_embeddings=False: transformers 5 always ties T5's lm_head to its embedding; "
                              "CodeT5 is tied, keep tie_word_embeddings=True")
        if feed_forward_proj not in ("relu", "gated-gelu"):
            raise ConfigError(f"feed_forward_proj={feed_forward_proj!r} is not a T5 option; CodeT5 uses 'relu' "
                              "(T5 v1.0), T5 v1.1 uses 'gated-gelu'")
        self.config = t5_config(vocab_size, d_model, d_ff, d_kv, num_layers, num_decoder_layers or num_layers,
                                num_heads, relative_attention_num_buckets, relative_attention_max_distance,
                                dropout_rate, layer_norm_epsilon, feed_forward_proj, tie_word_embeddings,
                                pad_token_id, eos_token_id, bos_token_id, decoder_start_token_id)
        self.model, self.it_head = build_model(self.config)
        self.vocab_size_limit = vocab_size
        self.num_beams = num_beams
        self.max_target_length = max_target_length
        self.generate_in_validation = generate_in_validation
        self.metrics = torch.nn.ModuleDict({
            "msp_accuracy": MulticlassAccuracy(vocab_size, average="micro", ignore_index=IGNORE),
            "mip_exact_match": MeanMetric(),
            "it_f1": BinaryF1Score(ignore_index=IGNORE),
            "smoothed_bleu4": SmoothedBLEU4(),
            "bleu": BLEUScore(n_gram=4),
            "exact_match": ExactMatch(),
        })

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Decoder logits (when ``labels`` are given) and IT logits of the encoder states."""
        self._check_batch(batch)
        encoder = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        out = {"it_logits": self.it_head(encoder.last_hidden_state)}
        if batch.get("labels") is not None:
            out["logits"] = self.model(encoder_outputs=encoder, attention_mask=batch["attention_mask"],
                                       labels=batch["labels"]).logits
        return out

    def _check_batch(self, batch: dict[str, Any]) -> None:
        if not isinstance(batch, dict) or "input_ids" not in batch:
            raise ConfigError("CodeT5Module expects a dict batch with 'input_ids' and 'attention_mask' "
                              "(as made by CodePretrainData / CodeSummarizationData or example_batch())")
        ids = batch["input_ids"]
        if ids.dtype not in (torch.long, torch.int, torch.int32):
            raise ConfigError(f"input_ids must be integer token ids, got {ids.dtype}")
        if ids.numel() and int(ids.max()) >= self.config.vocab_size:
            raise ConfigError(f"token id {int(ids.max())} >= vocab_size {self.config.vocab_size}: the tokenizer is "
                              "larger than the model's embedding; set model vocab_size >= len(tokenizer)")

    def seq2seq_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        # paper Eq. (1) MSP / Eq. (3) MIP / dual generation: -sum_t log P(y_t | y_<t, x), pads masked (-100)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss, out.logits

    def it_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        # paper Eq. (2) IT: -sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)] over code tokens
        self._check_batch(batch)
        hidden = self.model.get_encoder()(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).last_hidden_state
        logits = self.it_head(hidden)
        labels = batch["it_labels"]
        keep = labels != IGNORE
        loss = F.binary_cross_entropy_with_logits(logits[keep], labels[keep].float())
        return loss, logits

    def objective_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        objective = batch.get("objective", "seq2seq")
        if objective == "it":
            return self.it_loss(batch)[0]
        if objective in SEQ2SEQ:
            return self.seq2seq_loss(batch)[0]
        raise ConfigError(f"unknown objective {objective!r} in batch; expected one of {OBJECTIVES}")

    # ------------------------------------------------------------------ Lightning steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.objective_loss(batch)
        self.log_metrics("train", {"loss": loss, f"{batch.get('objective', 'seq2seq')}_loss": loss},
                         batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _evaluate(self, stage: str, batch: dict[str, Any]) -> None:
        size = self._batch_size(batch)
        if batch.get("objective") == "all":
            self._log_metric_values(stage, self.pretraining_metrics(batch), size)
            return
        loss = self.objective_loss(batch)
        self.log_metrics(stage, {"loss": loss}, batch_size=size)
        if batch.get("objective", "seq2seq") in ("seq2seq", "dual") and self.generate_in_validation:
            predictions = self.generate_text(batch["input_ids"], batch["attention_mask"])
            references = self.decode(batch["labels"])
            for name in ("smoothed_bleu4", "exact_match"):
                self.metrics[name].update(predictions, references)
            self.metrics["bleu"].update(predictions, [[r] for r in references])
            self.log_metrics(stage, {n: self.metrics[n] for n in ("smoothed_bleu4", "bleu", "exact_match")},
                             batch_size=size)

    @staticmethod
    def _batch_size(batch: dict[str, Any]) -> int:
        inner = batch["msp"] if batch.get("objective") == "all" else batch
        return int(inner["input_ids"].shape[0])

    def _log_metric_values(self, stage: str, metrics: dict[str, Any], size: int) -> None:
        self.log_metrics(stage, metrics, batch_size=size)

    @torch.no_grad()
    def pretraining_metrics(self, batch: dict[str, Any]) -> dict[str, Any]:
        """MSP token accuracy, MIP name exact match (teacher-forced) and IT F1 on one evaluation batch."""
        msp_loss, msp_logits = self.seq2seq_loss(batch["msp"])
        self.metrics["msp_accuracy"].update(msp_logits.argmax(-1), batch["msp"]["labels"])
        mip_loss, mip_logits = self.seq2seq_loss(batch["mip"])
        for correct in self.identifier_matches(mip_logits.argmax(-1), batch["mip"]["labels"]):
            self.metrics["mip_exact_match"].update(correct)
        it_loss, it_logits = self.it_loss(batch["it"])
        self.metrics["it_f1"].update((it_logits > 0).long(), batch["it"]["it_labels"])
        return {"loss": (msp_loss + mip_loss + it_loss) / 3, "msp_loss": msp_loss, "mip_loss": mip_loss,
                "it_loss": it_loss, "msp_accuracy": self.metrics["msp_accuracy"],
                "mip_exact_match": self.metrics["mip_exact_match"], "it_f1": self.metrics["it_f1"]}

    def identifier_matches(self, predictions: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Per masked identifier: 1.0 if every sub-token of its name is predicted right, else 0.0."""
        sentinels = set(self._sentinel_ids())
        matches = []
        for pred_row, label_row in zip(predictions.tolist(), labels.tolist()):
            current = None
            for p, y in zip(pred_row, label_row):
                if y == IGNORE or y == self.config.eos_token_id or y in sentinels:
                    if current is not None:
                        matches.append(torch.tensor(float(current)))
                    current = True if y in sentinels else None
                elif current is not None:
                    current = current and p == y
            if current is not None:
                matches.append(torch.tensor(float(current)))
        return matches

    def _sentinel_ids(self) -> list[int]:
        if self.tokenizer is None:
            raise ConfigError("MIP exact match needs the tokenizer (its sentinel ids); attach one with "
                              "model.attach_tokenizer(tok) or train with a DataModule")
        from zoo.models.codet5.tokenizer import sentinel_ids

        return sentinel_ids(self.tokenizer)

    # ------------------------------------------------------------------ generation
    def decode(self, ids: torch.Tensor) -> list[str]:
        if self.tokenizer is None:
            raise ConfigError("decoding needs a tokenizer; attach one with model.attach_tokenizer(tok)")
        ids = ids.masked_fill(ids == IGNORE, self.config.pad_token_id)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_beams: int | None = None,
                      max_length: int | None = None) -> list[str]:
        """Beam search (the paper's decoding), returned as text."""
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                  num_beams=num_beams or self.num_beams,
                                  max_length=max_length or self.max_target_length,
                                  early_stopping=True)
        return self.decode(out)

    def summarize(self, code: str | list[str], num_beams: int | None = None, max_source_length: int = 256,
                  max_length: int | None = None) -> list[str]:
        """One-line summaries of code strings (CodeXGLUE code-to-text)."""
        if self.tokenizer is None:
            raise ConfigError("summarize() needs a tokenizer; load a model with zoo.from_pretrained or "
                              "model.attach_tokenizer(tok)")
        codes = [code] if isinstance(code, str) else list(code)
        enc = self.tokenizer(codes, truncation=True, max_length=max_source_length, padding=True, return_tensors="pt")
        was_training = self.training
        self.eval()
        try:
            return self.generate_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device),
                                      num_beams=num_beams, max_length=max_length)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ tests
    def example_batch(self, batch_size: int = 2) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)
        low, high = 5, min(self.config.vocab_size, 5 + 200)
        ids = torch.randint(low, high, (batch_size, 12), generator=g)
        ids[:, 0], ids[:, -1] = self.config.bos_token_id, self.config.eos_token_id
        labels = torch.randint(low, high, (batch_size, 6), generator=g)
        labels[:, -1] = self.config.eos_token_id
        it_labels = torch.randint(0, 2, (batch_size, 12), generator=g)
        it_labels[:, 0] = it_labels[:, -1] = IGNORE
        return {"objective": "msp", "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                "it_labels": it_labels}
