"""Overhead of zoo over plain PyTorch / transformers, measured side by side in one process.

1. Training-step throughput of a transformer-sized ZooModule (a transformers BertForMaskedLM) through
   the Lightning Trainer vs a plain PyTorch loop on the same model, optimiser, schedule and batches.
2. ``zoo.from_pretrained`` load time vs transformers' ``from_pretrained`` of the same weights.

Runs alternate (plain, zoo, plain, zoo, ...) so machine noise hits both arms; medians are reported
and the verdicts are ratios. Writes JSON (``--out``).

    python bench/overhead.py --out bench/results/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from transformers import BertConfig, BertForMaskedLM

from zoo.core.module import OptimConfig, ZooModule, lr_lambda
from zoo.hub.pretrained import from_pretrained, save_pretrained
from zoo.registry import ModelEntry, Paper, register


class BenchBert(ZooModule):
    """A BERT MLM as a ZooModule: the shape of most families' training step."""

    family = "bench"

    def __init__(self, hidden: int = 256, layers: int = 4, heads: int = 4, vocab: int = 8000,
                 optim: OptimConfig | None = None):
        super().__init__(optim=optim)
        self.bert = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                               num_attention_heads=heads, intermediate_size=4 * hidden,
                                               max_position_embeddings=512))

    def forward(self, batch):
        return self.bert(input_ids=batch["input_ids"], labels=batch["labels"])

    def training_step(self, batch, batch_idx):
        loss = self(batch).loss
        self.log_metrics("train", {"loss": loss})
        return loss

    def example_batch(self, batch_size: int = 2):
        return make_batches(1, batch_size, 32, self.bert.config.vocab_size)[0]


register(ModelEntry(name="bench-bert", family="bench", module_class=BenchBert, config={},
                    paper=Paper("benchmark model", "0000.00000", "@misc{bench}"), license="apache-2.0"))


def make_batches(n: int, batch_size: int, length: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch_size, length), generator=g)
        labels = torch.where(torch.rand(ids.shape, generator=g) < 0.15, ids, torch.full_like(ids, -100))
        out.append({"input_ids": ids, "labels": labels})
    return out


def plain_loop(model: BenchBert, batches, warmup: int) -> float:
    """Seconds per step of the textbook loop: same AdamW groups and schedule as ZooModule builds."""
    model.train()
    named = [(n, p) for n, p in model.named_parameters()]
    optimizer = torch.optim.AdamW([{"params": [p for n, p in named if p.ndim >= 2 and not n.endswith(".bias")],
                                    "weight_decay": model.optim.weight_decay},
                                   {"params": [p for n, p in named if p.ndim < 2 or n.endswith(".bias")],
                                    "weight_decay": 0.0}], lr=model.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(model.optim, len(batches)))
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = model(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - start) / (len(batches) - warmup)


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.end = time.perf_counter()


def trainer_loop(model: BenchBert, batches, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
                         accelerator="cpu", devices=1)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    return (timer.end - timer.start) / (len(batches) - warmup)


def bench_training(args) -> dict:
    batches = make_batches(args.steps, args.batch_size, args.length, args.vocab)
    plain, zoo_times = [], []

    def fresh() -> BenchBert:
        torch.manual_seed(0)
        return BenchBert(hidden=args.hidden, layers=args.layers, vocab=args.vocab)

    plain_loop(fresh(), batches[: args.warmup + 2], args.warmup)  # process warm-up, discarded
    for repeat in range(args.repeats):  # alternate which arm goes first: drift hits both equally
        arms = [("plain", plain_loop, plain), ("zoo", trainer_loop, zoo_times)]
        for _, loop, times in arms if repeat % 2 == 0 else arms[::-1]:
            times.append(loop(fresh(), batches, args.warmup))
    p, z = statistics.median(plain), statistics.median(zoo_times)
    return {"plain_s_per_step": plain, "trainer_s_per_step": zoo_times, "plain_median": p, "trainer_median": z,
            "throughput_ratio_trainer_over_plain": p / z, "target": ">= 0.95"}


def bench_loading(args) -> dict:
    torch.manual_seed(0)
    model = BenchBert(hidden=args.load_hidden, layers=args.load_layers, vocab=30522).eval()
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        zoo_dir = save_pretrained(model, Path(tmp) / "zoo", card=False)
        hf_dir = Path(tmp) / "hf"
        model.bert.save_pretrained(hf_dir)
        batch = make_batches(1, 2, 16, 30522)[0]
        start = time.perf_counter()
        zoo_loaded = from_pretrained(zoo_dir)  # cold: hashes every file once (then remembered by size/mtime/inode)
        cold = time.perf_counter() - start
        hf_loaded = BertForMaskedLM.from_pretrained(hf_dir).eval()
        with torch.no_grad():
            same = torch.equal(zoo_loaded(batch).logits, hf_loaded(**batch).logits)
        del zoo_loaded, hf_loaded
        zoo_times, hf_times = [], []
        for _ in range(args.load_repeats):
            start = time.perf_counter()
            hf_loaded = BertForMaskedLM.from_pretrained(hf_dir)
            hf_times.append(time.perf_counter() - start)
            del hf_loaded
            start = time.perf_counter()
            zoo_loaded = from_pretrained(zoo_dir)
            zoo_times.append(time.perf_counter() - start)
            del zoo_loaded
    z, h = statistics.median(zoo_times), statistics.median(hf_times)
    return {"parameters": params, "zoo_s": zoo_times, "transformers_s": hf_times, "zoo_median": z,
            "transformers_median": h, "load_time_ratio_zoo_over_transformers": z / h, "target": "<= 1.0",
            "outputs_identical": same, "zoo_cold_first_load_s": cold,
            "note": "zoo's first load of a folder hashes every file (zoo_cold_first_load_s); later loads re-hash only "
                    "files whose size, mtime or inode changed. transformers does not verify hashes."}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/overhead.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--load-hidden", type=int, default=768)
    parser.add_argument("--load-layers", type=int, default=12)
    parser.add_argument("--load-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["ZOO_CACHE"] = tempfile.mkdtemp(prefix="zoo-bench-")  # a cold verification cache for this run
    result = {
        "benchmark": "zoo overhead vs plain PyTorch / transformers",
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "cpu": platform.processor(),
                    "threads": args.threads},
        "settings": vars(args),
        "training": bench_training(args),
        "loading": bench_loading(args),
    }
    t, ld = result["training"], result["loading"]
    result["verdict"] = {
        "trainer_throughput_ratio": round(t["throughput_ratio_trainer_over_plain"], 3),
        "trainer_meets_0.95": t["throughput_ratio_trainer_over_plain"] >= 0.95,
        "load_time_ratio": round(ld["load_time_ratio_zoo_over_transformers"], 3),
        "load_meets_1.0": ld["load_time_ratio_zoo_over_transformers"] <= 1.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["verdict"], indent=2))
    return result


if __name__ == "__main__":
    main()
