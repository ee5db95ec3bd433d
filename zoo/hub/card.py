"""Model cards: one Jinja template (hub_cards/modelcard.md.j2) + per-family metadata
(hub_cards/<family>.yaml) + what the run measured. Numbers are never hand-filled."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from zoo import registry
from zoo.errors import ConfigError

CARDS_DIR = Path(os.environ.get("ZOO_CARDS_DIR", Path(__file__).resolve().parents[2] / "hub_cards"))
TEMPLATE = "modelcard.md.j2"
VERSIONED = ("zoo", "torch", "lightning", "transformers", "tokenizers", "huggingface_hub", "safetensors", "datasets",
             "torchmetrics", "timm", "tree-sitter", "tree-sitter-python")


def family_metadata(family: str) -> dict[str, Any]:
    path = CARDS_DIR / f"{family}.yaml"
    if not path.is_file():
        return {}
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"card metadata {path} is not valid YAML: {err}") from err
    if not isinstance(meta, dict):
        raise ConfigError(f"card metadata {path} must be a mapping")
    return meta


def framework_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def eval_rows(results: dict | None) -> list[dict[str, Any]]:
    """``{"validation": {"dataset": {...}, "metrics": {...}}}`` -> one row per (split, metric)."""
    rows = []
    for split, block in (results or {}).items():
        if not isinstance(block, dict) or "metrics" not in block:
            continue
        dataset = block.get("dataset") or {}
        for metric, value in sorted(block["metrics"].items()):
            if isinstance(value, (int, float)):
                rows.append({"split": split, "dataset": dataset.get("name", "unknown"),
                             "dataset_id": dataset.get("id") or dataset.get("name", "unknown"),
                             "metric": metric, "value": round(float(value), 4)})
    return rows


def render_card(module, *, config: dict, results: dict | None = None, run: dict | None = None,
                claim: dict | None = None, base_model: str | None = None, model_name: str | None = None,
                repo_id: str | None = None) -> str:
    """The README.md of a hub folder, YAML front matter included (parses with ``ModelCard``)."""
    entry = registry.model_info(config["family"])
    meta = family_metadata(config["family"])
    run = dict(run or {})
    data = run.get("data")
    pipeline_tag = getattr(module, "pipeline_tag", None) or meta.get("pipeline_tag")  # the head decides the task
    model_name = model_name or f"zoo {config['family']} ({type(module).__name__})"
    rows = eval_rows(results)
    eval_results = [
        EvalResult(task_type=pipeline_tag or "other", dataset_type=r["dataset_id"], dataset_name=r["dataset"],
                   dataset_split=r["split"], metric_type=r["metric"], metric_name=r["metric"],
                   metric_value=r["value"])
        for r in rows
    ]
    datasets = list(meta.get("datasets", []))
    tags = ["zoo", "lightning", config["family"], *([meta["domain"]] if meta.get("domain") else []), *entry.tags]
    card_data = ModelCardData(
        library_name="zoo",
        license=entry.license,
        tags=list(dict.fromkeys(tags)),
        datasets=datasets or None,
        metrics=sorted({r["metric"] for r in rows}) or None,
        base_model=base_model,
        pipeline_tag=pipeline_tag,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    init_args = config["init_args"]
    optim = module.optim
    settings = [(k, json.dumps(v)) for k, v in init_args.items() if k != "optim"]
    converted = getattr(module, "converted_from", None) or {}
    command = run.get("command") or (f"zoo fit -c {entry.config_file}" if entry.config_file else "")
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARDS_DIR / TEMPLATE),
        model_name=model_name,
        family=config["family"],
        meta=meta,
        paper=entry.paper,
        base_model=base_model,
        converted_revision=converted.get("revision"),
        repo_hint=repo_id or f"your-org/{config['family']}-model",
        config_file=entry.config_file or f"configs/{config['family']}/tiny.yaml",
        class_path=config["class"],
        num_parameters=sum(p.numel() for p in module.parameters()),
        model_settings=settings,
        optim=optim,
        run=run,
        data=data,
        eval_rows=rows,
        claim=claim,
        reproduce=command or (f"zoo convert {config['family']} {base_model} OUT" if base_model
                              else "# not recorded: these weights were saved outside a `zoo fit` run"),
        versions=framework_versions(),
    )
    return str(card)
