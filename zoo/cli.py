"""The command line: LightningCLI for fit/validate/test/predict, plus the zoo verbs.

    zoo fit -c configs/codet5/tiny-pretrain.yaml --trainer.max_steps=200
    zoo validate -c configs/codet5/tiny-pretrain.yaml --ckpt_path runs/.../last.ckpt
    zoo fit --model=codet5-tiny --data=codet5_pretrain --print_config
    zoo list 'code*' | zoo info codet5 | zoo export CKPT OUT | zoo push OUT org/name
    zoo convert codet5 Salesforce/codet5-small out/codet5-small
    zoo sweep -c configs/x/tiny.yaml -m model.init_args.optim.lr=1e-4,3e-4

This is the top floor: it may import everything below it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI

from zoo import registry
from zoo.core.data import ZooDataModule
from zoo.core.module import ZooModule
from zoo.errors import CheckpointFormatError, ConfigError, ZooError
from zoo.hub.pretrained import (
    _instantiate,
    assign_state,
    check_keys,
    load_upstream,
    push_to_hub,
    save_pretrained,
)

VERBS = ("list", "info", "export", "push", "convert", "sweep")
RESULTS_NAME = "results.json"


# ---------------------------------------------------------------------------------------------- LightningCLI
def expand_short_names(args: Sequence[str]) -> list[str]:
    """``--model=codet5-tiny`` -> the registered class with that variant's config; ``--data=name`` likewise."""
    out: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        key, value = None, None
        for flag in ("--model", "--data"):
            if arg == flag and i + 1 < len(items):
                key, value = flag, items[i + 1]
                i += 1
            elif arg.startswith(flag + "="):
                key, value = flag, arg.split("=", 1)[1]
        if key is None or "." in value or value.startswith(("{", "[")):
            out.append(arg if key is None else f"{key}={value}")
        elif key == "--model" and registry.is_model(value):
            entry = registry.model_info(value)
            out.append("--model=" + json.dumps({"class_path": entry.class_path, "init_args": dict(entry.config)}))
        elif key == "--data" and value in registry.datamodule_names():
            out.append(f"--data={registry.class_path(registry.get_datamodule(value))}")
        elif key == "--model" and value not in {c.__name__ for c in registry.registered_classes().values()}:
            raise registry._unknown(value, registry.list_models() + registry.list_families())
        else:
            out.append(f"{key}={value}")
        i += 1
    return out


def results_path_for(ckpt_path: str | None, log_dir: str | None) -> Path | None:
    if ckpt_path:
        ckpt = Path(ckpt_path)
        return (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / RESULTS_NAME
    return Path(log_dir) / RESULTS_NAME if log_dir else None


def write_results(path: Path, split: str, datamodule, metrics: dict[str, Any]) -> dict:
    """Merge one split's metrics into results.json (the file `zoo export` puts in the card)."""
    prefix = {"validation": "val/", "test": "test/"}[split]
    values = {k[len(prefix):]: float(v) for k, v in metrics.items() if k.startswith(prefix)}
    results = json.loads(path.read_text()) if path.is_file() else {}
    dataset = datamodule.describe() if hasattr(datamodule, "describe") else {}
    results[split] = {"dataset": dataset, "metrics": values,
                      "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return results


class ZooCLI(LightningCLI):
    """LightningCLI over the zoo bases, in subclass mode; short registry names resolve."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True, **kwargs):
        registry.list_models()  # import every family: subclass mode only sees imported classes
        self._zoo_args = list(sys.argv[1:] if args is None else args)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf+"} if not run else
                          {sub: {"parser_mode": "omegaconf+"} for sub in ("fit", "validate", "test", "predict")})
        super().__init__(ZooModule, ZooDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         args=expand_short_names(self._zoo_args), run=run, auto_configure_optimizers=False, **kwargs)

    def before_fit(self) -> None:
        record = self.model._run_record
        record["command"] = "zoo " + " ".join(shlex.quote(a) for a in self._zoo_args)
        record["batch_size"] = getattr(self.datamodule, "batch_size", None)
        try:
            parser = self._parser(self.subcommand)
            record["config"] = parser.dump(self.config[self.subcommand], skip_none=False).strip()
        except Exception as err:  # the card then lacks the dump, the run does not fail
            record["config"] = f"# could not dump the resolved config: {err}"

    def _after_eval(self, split: str) -> None:
        subcommand_config = self.config.get(self.subcommand, {})
        path = results_path_for(subcommand_config.get("ckpt_path"), self.trainer.log_dir)
        if path is not None and self.trainer.is_global_zero:
            write_results(path, split, self.datamodule, dict(self.trainer.callback_metrics))
            print(f"results written to {path}")

    def after_validate(self) -> None:
        self._after_eval("validation")

    def after_test(self) -> None:
        self._after_eval("test")


def run_cli(args: Sequence[str], run: bool = True) -> ZooCLI:
    argv, sys.argv = sys.argv, sys.argv[:1]  # args are explicit: keep LightningCLI from also reading sys.argv
    try:
        return ZooCLI(args=list(args), run=run)
    finally:
        sys.argv = argv


def load_config(path: str, overrides: Sequence[str] | dict | None = None) -> SimpleNamespace:
    """The model, datamodule and trainer a config file describes, built in Python (no run)."""
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    if isinstance(overrides, dict):
        overrides = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    cli = run_cli(["-c", str(path), *(overrides or [])], run=False)
    return SimpleNamespace(model=cli.model, datamodule=cli.datamodule, trainer=cli.trainer, config=cli.config)


# ---------------------------------------------------------------------------------------------- zoo verbs
def cmd_list(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo list", description="Registered models matching a pattern.")
    p.add_argument("pattern", nargs="?", default="*")
    p.add_argument("--pretrained", action="store_true", help="only models with upstream checkpoints")
    a = p.parse_args(argv)
    names = registry.list_models(a.pattern, pretrained=a.pretrained)
    for name in names:
        e = registry.model_info(name)
        ups = f"  upstream: {', '.join(u.repo_id for u in e.upstream)}" if e.upstream else ""
        print(f"{name:32s} {e.family:18s} {e.variant:10s}{ups}")
    if not names:
        print(f"no model matches {a.pattern!r}; `zoo list` shows all", file=sys.stderr)
        return 1
    return 0


def cmd_info(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo info", description="A model's registry entry as JSON.")
    p.add_argument("name")
    info = registry.model_info(p.parse_args(argv).name).to_dict()
    info["datamodules"] = {k: registry.class_path(v) for k, v in registry.datamodule_names().items()
                           if v.__module__.startswith(f"zoo.models.{info['family']}")}
    print(json.dumps(info, indent=2))
    return 0


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointFormatError(f"{path} is not a readable Lightning checkpoint ({type(err).__name__}: {err}); "
                                    "it may be truncated or not a checkpoint at all") from err


def module_from_checkpoint(ckpt: dict, where: str):
    hparams = dict(ckpt.get("hyper_parameters") or {})
    class_name = hparams.pop("_class_path", None) or ckpt.get("zoo_class")
    hparams.pop("_instantiator", None)
    if not class_name:
        raise CheckpointFormatError(f"{where} does not say which model class wrote it; was it saved by `zoo fit`?")
    cls = registry.resolve_class(class_name)
    module = _instantiate(cls, hparams, on_meta=True)
    state = ckpt.get("state_dict") or {}
    check_keys(module, state, {}, strict=True, where=where)
    assign_state(module, dict(state))
    module.on_load_checkpoint(ckpt)
    return module.eval()


def cmd_export(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo export",
                                description="Hub folder + generated card from a Lightning checkpoint.")
    p.add_argument("ckpt")
    p.add_argument("out")
    p.add_argument("--results", help=f"{RESULTS_NAME} of a validate/test run (default: the one beside the checkpoint)")
    p.add_argument("--claim", help="bench/results/<family>_claim.json to show in the card")
    p.add_argument("--name", help="model name in the card (default: the output folder's name)")
    p.add_argument("--repo-id", help="Hub id the card's usage snippet shows")
    a = p.parse_args(argv)
    ckpt = load_checkpoint(a.ckpt)
    module = module_from_checkpoint(ckpt, a.ckpt)
    results_file = Path(a.results) if a.results else results_path_for(a.ckpt, None)
    results = json.loads(results_file.read_text()) if results_file and results_file.is_file() else None
    if a.results and results is None:
        raise ConfigError(f"results file {a.results} does not exist")
    folder = save_pretrained(module, a.out, results=results, run=dict(ckpt.get("zoo_run") or {}), claim=a.claim,
                             model_name=a.name, repo_id=a.repo_id)
    print(f"hub folder written to {folder}" + ("" if results else f" (no {RESULTS_NAME} found: run `zoo validate` "
                                                                "with --ckpt_path first to put metrics in the card)"))
    return 0


def cmd_push(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo push", description="Upload a hub folder as one commit.")
    p.add_argument("folder")
    p.add_argument("repo_id")
    p.add_argument("--branch", "--revision", dest="branch")
    p.add_argument("--private", action="store_true")
    p.add_argument("--create-pr", action="store_true")
    p.add_argument("--token")
    p.add_argument("--message")
    a = p.parse_args(argv)
    info = push_to_hub(a.folder, a.repo_id, branch=a.branch, private=a.private, create_pr=a.create_pr,
                       token=a.token, commit_message=a.message)
    print(f"pushed {a.folder} to {a.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0


def cmd_convert(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo convert", description="Upstream checkpoint -> zoo hub folder.")
    p.add_argument("family")
    p.add_argument("source", help="an upstream Hub id known to the registry, or a local folder in its layout")
    p.add_argument("out")
    p.add_argument("--upstream", help="which registered upstream layout a local folder has (default: the family's)")
    p.add_argument("--revision")
    p.add_argument("--local-files-only", action="store_true")
    a = p.parse_args(argv)
    family = registry.model_info(a.family).family
    if Path(a.source).is_dir():
        candidates = registry.list_upstream(family)
        if a.upstream:
            candidates = [u for u in candidates if u.repo_id == a.upstream]
        converters = {u.converter for u in candidates}
        if len(converters) != 1:
            raise ConfigError(f"cannot tell which upstream layout {a.source} has among "
                              f"{[u.repo_id for u in registry.list_upstream(family)]}; pass --upstream REPO_ID")
        module, base = next(iter(converters))(Path(a.source)), (a.upstream or candidates[0].repo_id)
    else:
        upstream = registry.find_upstream(a.source)
        if upstream is None or registry.model_info(upstream.model).family != family:
            known = [u.repo_id for u in registry.list_upstream(family)]
            raise ConfigError(f"{a.source!r} is not a known upstream checkpoint of {family} (known: {known}) "
                              "and not a local folder")
        module = load_upstream(a.source, revision=a.revision, local_files_only=a.local_files_only)
        base = a.source
    folder = save_pretrained(module, a.out, base_model=base)
    print(f"converted {a.source} -> {folder}")
    return 0


def cmd_sweep(argv: Sequence[str]) -> int:
    """Hydra multirun syntax over the same YAML files: every combination is one `zoo fit` run."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    p = argparse.ArgumentParser(prog="zoo sweep", description="Hydra multirun over LightningCLI configs.")
    p.add_argument("subcommand", nargs="?", default="fit", choices=["fit", "validate", "test"])
    p.add_argument("-c", "--config", action="append", default=[], required=True)
    p.add_argument("-m", "--multirun", nargs="+", required=True, help="key=v1,v2 ... (Hydra sweep syntax)")
    p.add_argument("--out", default="runs/sweep", help="one sub-folder per run")
    p.add_argument("--dry-run", action="store_true")
    a, extra = p.parse_known_args(argv)
    overrides = OverridesParser.create().parse_overrides(a.multirun)
    jobs = BasicSweeper.split_arguments(overrides, max_batch_size=None)[0]
    root = Path(a.out) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    summary = []
    for index, job in enumerate(jobs):
        flags = [f"--{item}" for item in job]
        args = [a.subcommand, *sum((["-c", c] for c in a.config), []), *flags,
                f"--trainer.default_root_dir={root / str(index)}", *extra]
        print(f"[{index + 1}/{len(jobs)}] zoo {' '.join(args)}")
        if a.dry_run:
            summary.append({"overrides": job, "args": args})
            continue
        cli = run_cli(args)
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
        summary.append({"overrides": job, "args": args, "metrics": metrics})
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{len(jobs)} run(s); summary in {root / 'summary.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("ZOO_NUM_THREADS"):  # on a shared CPU one thread is often faster than all of them
        torch.set_num_threads(int(os.environ["ZOO_NUM_THREADS"]))
    verbs = {"list": cmd_list, "info": cmd_info, "export": cmd_export, "push": cmd_push, "convert": cmd_convert,
             "sweep": cmd_sweep}
    try:
        if argv and argv[0] in verbs:
            return verbs[argv[0]](argv[1:])
        run_cli(argv)
        return 0
    except ZooError as err:
        print(f"zoo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
