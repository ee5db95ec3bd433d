"""Model cards generated from real runs: each family's tiny recipe is trained with the CLI, validated,
exported with its claim results, and the generated README.md is kept in docs/cards/ for reading.

    python bench/export_cards.py [dnabert2 dupmae xar]      # codet5's card comes from `make demo`

Each stage is exactly a command a user would type (`zoo fit`, `zoo validate --ckpt_path`, `zoo export`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from zoo.cli import main, run_cli

RECIPES: dict[str, dict] = {
    # family: stages (config, extra CLI args), the last stage is validated and exported
    "dnabert2": {"stages": [("configs/dnabert2/tiny-mlm.yaml", []), ("configs/dnabert2/tiny-classify.yaml", [])],
                 "name": "dnabert2-tiny-classify"},
    "dupmae": {"stages": [("configs/dupmae/tiny-pretrain.yaml", []), ("configs/dupmae/tiny-finetune.yaml", [])],
               "name": "dupmae-tiny-finetune"},
    "xar": {"stages": [("configs/xar/tiny.yaml", [])], "name": "xar-tiny"},
}


def run_family(family: str, out_root: Path, docs: Path) -> Path:
    recipe = RECIPES[family]
    started = time.perf_counter()
    last = None
    for config, extra in recipe["stages"]:
        print(f"== zoo fit -c {config} {' '.join(extra)}", flush=True)
        cli = run_cli(["fit", "-c", config, *extra])
        last = cli.trainer.checkpoint_callback.last_model_path or cli.trainer.checkpoint_callback.best_model_path
        if not last:
            raise SystemExit(f"{config} saved no checkpoint; its trainer needs a ModelCheckpoint(save_last=True)")
    config = recipe["stages"][-1][0]
    print(f"== zoo validate -c {config} --ckpt_path {last}", flush=True)
    run_cli(["validate", "-c", config, f"--ckpt_path={last}"])
    out = out_root / recipe["name"]
    claim = Path(f"bench/results/{family}_claim.json")
    args = ["export", last, str(out), "--repo-id", f"zoo-models/{recipe['name']}"]
    assert main(args + (["--claim", str(claim)] if claim.is_file() else [])) == 0
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "README.md", docs / f"{recipe['name']}.md")
    for figure in out.glob("*.png"):
        shutil.copyfile(figure, docs / figure.name)
    print(f"== {family}: card in {docs / (recipe['name'] + '.md')} ({time.perf_counter() - started:.0f} s)")
    return out


def main_cli(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=sorted(RECIPES))
    parser.add_argument("--out", default="out/cards")
    parser.add_argument("--docs", default="docs/cards")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for family in args.families:
        if family not in RECIPES:
            sys.exit(f"no card recipe for {family!r}; known: {sorted(RECIPES)}")
        run_family(family, Path(args.out), Path(args.docs))


if __name__ == "__main__":
    main_cli()
