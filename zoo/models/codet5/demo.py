"""`make demo`: a tiny CodeT5 pre-trained and fine-tuned on Python's standard library, on CPU, in minutes.

1. identifier-aware pre-training (MSP / IT / MIP alternating) on stdlib functions;
2. fine-tuning on code -> first docstring line, measured on held-out files (smoothed BLEU-4);
3. exported as a hub folder with its generated card, reloaded with ``zoo.from_pretrained``;
4. the reloaded model summarizes a function from a file it never saw.

    python -m zoo.models.codet5.demo [--out out/codet5-tiny-demo] [--pretrain-steps 150] [--finetune-steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

import zoo
from zoo.core.module import OptimConfig
from zoo.models.codet5 import TINY, CodePretrainData, CodeSummarizationData, CodeT5Module

CLAIM = Path("bench/results/codet5_claim.json")  # written by bench/codet5_claim.py (3 seeds, both arms)


def claim_file() -> Path | None:
    """The measured claim table for the card: from the working directory, else from this checkout's root."""
    for path in (CLAIM, Path(__file__).resolve().parents[3] / CLAIM):
        if path.is_file():
            return path
    return None


def trainer(steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10, **kwargs)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/codet5-tiny-demo")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--limit", type=int, default=2000, help="functions per split")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("ZOO_THREADS", "1")))  # 1 thread is fastest on a shared CPU
    pl.seed_everything(0)
    started = time.perf_counter()

    print("1/4 identifier-aware pre-training on the standard library (MSP / IT / MIP)")
    pretrain = CodePretrainData(batch_size=16, max_length=128, max_target_length=64, tokenizer_vocab_size=4000,
                                limit=args.limit)
    model = CodeT5Module(**TINY, optim=OptimConfig(lr=2e-3, warmup=0.05))
    trainer(args.pretrain_steps, limit_val_batches=4).fit(model, pretrain)

    print("2/4 fine-tuning on code -> docstring summarization")
    summarize = CodeSummarizationData(batch_size=16, max_length=128, max_target_length=32, limit=args.limit)
    trainer(args.finetune_steps, limit_val_batches=0).fit(model, summarize)
    test = trainer(1, limit_test_batches=4).test(model, summarize.test_dataloader(), verbose=False)[0]
    metrics = {k.split("/", 1)[1]: round(float(v), 4) for k, v in test.items()
               if k.split("/", 1)[1] in ("smoothed_bleu4", "bleu", "exact_match", "loss")}
    results = {"test": {"dataset": {"name": CodeSummarizationData.dataset_name, "id": "python-stdlib"},
                        "metrics": metrics}}
    print("   held-out test:", metrics)

    print("3/4 exporting a hub folder with its generated card")
    claim_path = claim_file()
    claim = json.loads(claim_path.read_text()) if claim_path else None
    print(f"   card claim table: {claim_path or 'none (run bench/codet5_claim.py to add it)'}")
    folder = zoo.save_pretrained(model, args.out, results=results, claim=claim)
    reloaded = zoo.from_pretrained(folder)

    print("4/4 the reloaded model summarizes a function from a held-out file")
    example = summarize.held_out_example(3)
    prediction = reloaded.summarize(example["code_nodoc"], max_source_length=128)[0]
    print(f"\n--- {example['group']} ---\n{example['code_nodoc'][:600]}")
    print(f"reference docstring: {example['docstring']}")
    print(f"model summary:       {prediction}\n")
    print(f"hub folder: {Path(folder).resolve()}  (README.md is the generated card)")
    print(f"push it:    zoo push {folder} ORG/NAME")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    return Path(folder)


if __name__ == "__main__":
    main()
