"""DupMAE / RetroMAE objectives, bi-encoder fine-tuning and retrieval evaluation.

One module, four objectives (``objective=``):

- ``mlm``: the BERT baseline, L = L_enc;
- ``retromae``: L = L_dec + L_enc (the [CLS] decoder reconstructs every token from h_CLS);
- ``dupmae``: L = L_dec + lambda * L_bow + L_enc, lambda = 0.1 (RetroMAE-2 / DupMAE, Eq. 8);
- ``contrastive``: bi-encoder fine-tuning, InfoNCE over in-batch and hard negatives with a temperature.

Validation always measures zero-shot (or fine-tuned) retrieval on held-out query -> passage pairs
with every representation (cls, mean, ot, unified); the headline ``val/mrr`` uses ``eval_representation``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from zoo.core.module import OptimConfig, ZooModule
from zoo.errors import ConfigError
from zoo.models.dupmae.masking import IGNORE, pretrain_batch
from zoo.models.dupmae.model import DupMAEModel, bert_config
from zoo.models.dupmae.search import REPRESENTATIONS, check_representation, combine, pair_scores, retrieval_metrics

Objective = Literal["mlm", "retromae", "dupmae", "contrastive"]
Representation = Literal["cls", "mean", "ot", "unified"]
OBJECTIVES = ("mlm", "retromae", "dupmae", "contrastive")


class DupMAE(ZooModule):
    """BERT MLM encoder pre-trained as MLM / RetroMAE / DupMAE, or fine-tuned as a bi-encoder.

        >>> model = DupMAE(objective="dupmae")                  # doctest: +SKIP
        >>> losses = model(model.example_batch())               # {"loss", "enc", "dec", "bow"}
    """

    family = "dupmae"
    pipeline_tag = "sentence-similarity"
    keep_in_full_precision = ("encoder.cls",)

    def __init__(
        self,
        objective: Objective = "dupmae",
        vocab_size: int = 4096,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 2,
        intermediate_size: int = 512,
        max_position_embeddings: int = 512,
        dropout: float = 0.1,
        bow_weight: float = 0.1,
        temperature: float = 1.0,
        train_representation: Representation = "cls",
        eval_representation: Representation = "unified",
        similarity: Literal["dot", "cosine"] = "dot",
        top_k_terms: int | None = 128,
        dense_dim: int | None = None,
        init_from: str | None = None,
        optim: OptimConfig | None = None,
    ):
        super().__init__(optim=optim)
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; "
                              "pick num_heads that divides hidden_size")
        if similarity not in ("dot", "cosine"):
            raise ConfigError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        check_representation(train_representation)
        check_representation(eval_representation)
        self.objective = objective
        self.bow_weight = bow_weight
        self.temperature = temperature
        self.train_representation = train_representation
        self.eval_representation = eval_representation
        self.similarity = similarity
        self.top_k_terms = top_k_terms
        self.init_from = init_from
        self.vocab_size_limit = vocab_size
        config = bert_config(vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                             max_position_embeddings, dropout)
        self.model = DupMAEModel(config, with_decoder=objective in ("retromae", "dupmae"), dense_dim=dense_dim)
        self.init_report: dict[str, Any] | None = None
        self._val_store: dict[str, list] = {}

    # ------------------------------------------------------------------ initialisation from a pretrained encoder
    def prepare_init(self) -> None:
        """Load ``init_from`` once, at the start of a fresh fit (never when loading a saved model)."""
        trainer = self._trainer
        fresh_fit = trainer is None or (trainer.state.fn == "fit" and trainer.ckpt_path is None
                                        and trainer.global_step == 0)
        if self.init_from and self.init_report is None and fresh_fit:
            from zoo.models.dupmae.convert import load_encoder

            self.init_report = load_encoder(self, self.init_from)

    def setup(self, stage: str) -> None:
        self.prepare_init()
        super().setup(stage)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pre-training losses, contrastive loss + scores, or retrieval vectors, by the batch's keys."""
        if "encoder_input_ids" in batch:
            return self.pretrain_losses(batch)
        if "query_input_ids" in batch and "passage_input_ids" in batch:
            return self.contrastive(batch)
        if "input_ids" in batch:
            return self.model.represent(batch["input_ids"], batch["attention_mask"])
        raise ConfigError(f"batch keys {sorted(batch)} match no DupMAE input; expected a pre-training batch "
                          "(encoder_input_ids, ...), a pair batch (query_input_ids, passage_input_ids) or "
                          "input_ids + attention_mask")

    def check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Refuse a batch of the other task, naming the fix."""
        pretraining = "encoder_input_ids" in batch
        if self.objective == "contrastive" and pretraining:
            raise ConfigError("objective='contrastive' fine-tunes on pairs but got a pre-training batch; "
                              "use RetrievalData(task='finetune') or set objective to mlm/retromae/dupmae")
        if self.objective != "contrastive" and not pretraining:
            raise ConfigError(f"objective={self.objective!r} pre-trains but got a pair batch; use "
                              "RetrievalData(task='pretrain') or set objective='contrastive' to fine-tune")

    def pretrain_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        mask = batch["attention_mask"]
        hidden = self.model.encoder.bert(input_ids=batch["encoder_input_ids"], attention_mask=mask).last_hidden_state
        vocab = self.model.config.vocab_size
        labels = batch["labels"]
        # only L_bow needs logits at every position; L_enc alone pays for the masked ones (same loss, less work)
        logits = self.model.lm_head(hidden) if self.objective == "dupmae" else None
        masked_logits = logits[labels != IGNORE] if logits is not None else self.model.lm_head(hidden[labels != IGNORE])
        # L_enc: masked language modelling on the encoder's masked positions (RetroMAE Eq. 1)
        enc = F.cross_entropy(masked_logits, labels[labels != IGNORE])
        out = {"enc": enc}
        loss = enc
        if self.objective in ("retromae", "dupmae"):
            dec_logits = self.model.decode(hidden[:, 0], batch["input_ids"], batch["decoder_visible"])
            # L_dec: enhanced decoding, every ordinary token reconstructed from h_CLS (RetroMAE Eq. 6)
            dec = F.cross_entropy(dec_logits.reshape(-1, vocab), batch["decoder_labels"].reshape(-1),
                                  ignore_index=IGNORE)
            out["dec"] = dec
            loss = loss + dec
        if self.objective == "dupmae":
            out["bow"] = self.bag_of_words_loss(logits, mask, batch["bow_ids"])
            loss = loss + self.bow_weight * out["bow"]  # L = L_dec + lambda L_bow + L_enc (DupMAE Eq. 8)
        out["loss"] = loss
        return out

    @staticmethod
    def bag_of_words_loss(logits: torch.Tensor, attention_mask: torch.Tensor, bow_ids: torch.Tensor) -> torch.Tensor:
        # L_bow = -sum_v w_v log softmax(max_i W h_i)_v, w_v = 1/n over the input's distinct ids (DupMAE Eq. 5-6)
        positions = attention_mask.bool().clone()
        positions[:, 0] = False
        ot = logits.masked_fill(~positions.unsqueeze(-1), float("-inf")).amax(1)
        log_p = F.log_softmax(ot, dim=-1)
        valid = bow_ids >= 0
        picked = log_p.gather(1, bow_ids.clamp(min=0)) * valid
        return -(picked.sum(1) / valid.sum(1).clamp(min=1)).mean()

    def contrastive(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        queries = self.model.represent(batch["query_input_ids"], batch["query_attention_mask"])
        passages = self.model.represent(batch["passage_input_ids"], batch["passage_attention_mask"])
        # the full OT vector while training (top-k is not differentiable); top-k applies when indexing
        q = combine(queries, self.train_representation, self.similarity, None)
        p = combine(passages, self.train_representation, self.similarity, None)
        scores = pair_scores(q, p) / self.temperature
        n_queries, n_passages = scores.shape
        if n_passages % n_queries:
            raise ConfigError(f"{n_passages} passages for {n_queries} queries; each query needs the same "
                              "group size (1 positive first, then its hard negatives)")
        group = n_passages // n_queries
        target = torch.arange(n_queries, device=scores.device) * group
        # InfoNCE over in-batch and hard negatives: -log exp(s(q,p+)/t) / sum_p exp(s(q,p)/t) (RetroMAE Sec. 3.3)
        return {"loss": F.cross_entropy(scores, target), "scores": scores}

    # ------------------------------------------------------------------ Lightning steps
    def training_step(self, batch, batch_idx):
        self.check_batch(batch)
        out = self(batch)
        self.log_metrics("train", {k: v for k, v in out.items() if k != "scores"})
        return out["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val_store = {"q": [], "p": [], "qkey": [], "pkey": []}

    def validation_step(self, batch, batch_idx):
        if "query_input_ids" not in batch:
            raise ConfigError("validation measures retrieval and needs pair batches (query_input_ids, "
                              "passage_input_ids, passage_key); RetrievalData provides them for every task")
        with torch.no_grad():
            q = self.model.represent(batch["query_input_ids"], batch["query_attention_mask"])
            p = self.model.represent(batch["passage_input_ids"], batch["passage_attention_mask"])
        self._val_store["q"].append({k: v.float().cpu() for k, v in q.items()})
        self._val_store["p"].append({k: v.float().cpu() for k, v in p.items()})
        self._val_store["qkey"].append(batch["passage_key"].cpu())
        self._val_store["pkey"].append(batch["passage_key"].cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_store.get("q"):
            return
        metrics = self.retrieval_eval(self._val_store)
        self.log_metrics("val", metrics)
        self._val_store = {}

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        if self._val_store.get("q"):
            self.log_metrics("test", self.retrieval_eval(self._val_store))
            self._val_store = {}

    def retrieval_eval(self, store: dict[str, list], representations: Sequence[str] = REPRESENTATIONS) -> dict:
        """Metrics for each representation; the eval representation's are also logged without suffix."""
        q = {k: torch.cat([b[k] for b in store["q"]]) for k in store["q"][0]}
        p = {k: torch.cat([b[k] for b in store["p"]]) for k in store["p"][0]}
        qkey, pkey = torch.cat(store["qkey"]), torch.cat(store["pkey"])
        # the corpus is the split's distinct passages; a query's relevant passage is the one with its key
        pkey, first = unique_first(pkey)
        p = {k: v[first] for k, v in p.items()}
        relevant = qkey.unsqueeze(1) == pkey.unsqueeze(0)
        out = {}
        for rep in representations:
            scores = pair_scores(combine(q, rep, self.similarity, self.top_k_terms),
                                 combine(p, rep, self.similarity, self.top_k_terms))
            for name, value in retrieval_metrics(scores, relevant, (1, 10, 100)).items():
                out[f"{name}_{rep}"] = value
                if rep == self.eval_representation:
                    out[name] = value
        return out

    # ------------------------------------------------------------------ encoding texts (search, notebooks)
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], max_length: int = 256) -> dict[str, torch.Tensor]:
        """Retrieval vectors (cls, mean, ot) of raw texts, in eval mode, on the model's device."""
        if self.tokenizer is None:
            raise ConfigError("encode_texts needs a tokenizer; attach one with model.attach_tokenizer(tok)")
        if isinstance(texts, str):
            raise ConfigError("encode_texts takes a list of strings; wrap a single text in a list")
        was_training = self.training
        self.eval()
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        vectors = self.model.represent(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        self.train(was_training)
        return {k: v.float().cpu() for k, v in vectors.items()}

    # ------------------------------------------------------------------ registry-wide tests
    def example_batch(self, batch_size: int = 2) -> dict[str, torch.Tensor]:
        """A tiny valid batch for this objective: pre-training batch or pair batch (with one hard negative)."""
        generator = torch.Generator().manual_seed(0)
        vocab = self.model.config.vocab_size
        length = 12

        def ids(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # [CLS]=2, [SEP]=3, [MASK]=4 as in the tokenizers this family trains; ordinary ids from 5
            body = torch.randint(5, vocab, (n, length), generator=generator)
            body[:, 0], body[:, -1] = 2, 3
            word = torch.arange(length).repeat(n, 1) // 2  # two-token words, to exercise whole-word masking
            word[:, 0], word[:, -1] = -1, -1
            return body, torch.ones(n, length, dtype=torch.long), word

        if self.objective != "contrastive":
            input_ids, attention_mask, word_ids = ids(batch_size)
            return pretrain_batch(input_ids, attention_mask, word_ids, mask_token_id=4, vocab_size=vocab,
                                  special_ids=(0, 1, 2, 3, 4))
        q, qm, _ = ids(batch_size)
        p, pm, _ = ids(batch_size * 2)
        return {"query_input_ids": q, "query_attention_mask": qm, "passage_input_ids": p,
                "passage_attention_mask": pm, "passage_key": torch.arange(batch_size * 2)[::2]}


def unique_first(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct keys in first-seen order, index of each one's first occurrence)."""
    seen: dict[int, int] = {}
    for i, k in enumerate(keys.tolist()):
        seen.setdefault(k, i)
    index = torch.tensor(list(seen.values()), dtype=torch.long)
    return keys[index], index
