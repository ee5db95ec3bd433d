"""Upstream ``zhihan1996/DNABERT-2-117M`` -> zoo, strict.

The upstream checkpoint is a MosaicBERT-style ``BertForMaskedLM`` (or, after GUE fine-tuning, a
``BertForSequenceClassification``) whose parameter names our ``model.py`` reproduces one to one.
Conversion therefore refuses anything but an exact match: loading it into vanilla ``BertModel``
silently dropped ALiBi and the GLU weights (upstream issue #9), and we never repeat that.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zoo.errors import CheckpointFormatError, KeyMismatchError
from zoo.models.dnabert2.model import DnaBert2Config
from zoo.models.dnabert2.module import DnaBert2ForMaskedLM, DnaBert2ForSequenceClassification

REPO_ID = "zhihan1996/DNABERT-2-117M"
#: the commit whose model.safetensors / config.json / tokenizer.json the converter was written against
REVISION = "b5ae377faa374ee160eec1c27b8494436cc94451"
#: upstream config.json key -> DnaBert2Config field
CONFIG_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads", "intermediate_size": "intermediate_size",
    "type_vocab_size": "type_vocab_size", "hidden_dropout_prob": "hidden_dropout_prob",
    "attention_probs_dropout_prob": "attention_probs_dropout_prob", "layer_norm_eps": "layer_norm_eps",
    "alibi_starting_size": "alibi_starting_size", "initializer_range": "initializer_range",
}
#: tensors upstream saves twice (tied weights); each must equal the tensor it aliases
TIED_ALIASES = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                "cls.predictions.bias": "cls.predictions.decoder.bias"}


def read_upstream_config(folder: Path) -> tuple[DnaBert2Config, dict]:
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointFormatError(f"{folder} has no config.json; download {REPO_ID} at revision {REVISION}")
    raw = json.loads(path.read_text())
    if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") not in ("absolute",):
        raise CheckpointFormatError(f"{path} asks for hidden_act={raw.get('hidden_act')!r} / "
                                    f"position_embedding_type={raw.get('position_embedding_type')!r}; "
                                    "only DNABERT-2's GELU + ALiBi layout is supported")
    return DnaBert2Config(**{ours: raw[theirs] for theirs, ours in CONFIG_KEYS.items() if theirs in raw}), raw


def read_upstream_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or pytorch_model.bin read without executing pickled code."""
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    raise CheckpointFormatError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every tensor or nothing; tied aliases must equal the tensor they duplicate."""
    state = dict(state)
    for alias, target in TIED_ALIASES.items():
        if alias in state:
            if target in state and not torch.equal(state[alias], state[target]):
                raise KeyMismatchError(f"{alias} differs from {target}, which it is tied to; the checkpoint "
                                       "is not a DNABERT-2 MLM checkpoint", mismatched=[alias])
            state.setdefault(target, state[alias])
            state.pop(alias)
    expected = {k: v for k, v in module.state_dict().items() if k not in TIED_ALIASES}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                        for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if missing or unexpected or mismatched:
        raise KeyMismatchError(
            f"refusing a partial DNABERT-2 load: {len(missing)} missing {missing[:6]}, {len(unexpected)} unexpected "
            f"{unexpected[:6]}, {len(mismatched)} mis-shaped {mismatched[:6]}. Use the files of {REPO_ID} at "
            f"revision {REVISION} (config.json must match the weights)", missing, unexpected, mismatched)
    module.load_state_dict(state, strict=False)  # tied decoder weight is the embedding; everything else checked above


def load_upstream_tokenizer(folder: Path):
    if not (folder / "tokenizer.json").exists():
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                                   dna_scheme="bpe", dna_k=0)


def convert_dnabert2(folder: str | Path):
    """A ready zoo module from a folder with upstream's files: MLM or, if it has a classifier, classification."""
    folder = Path(folder)
    cfg, _ = read_upstream_config(folder)
    state = read_upstream_weights(folder)
    if "classifier.weight" in state:
        module = DnaBert2ForSequenceClassification(config=cfg, num_labels=int(state["classifier.weight"].shape[0]))
    elif any(k.startswith("cls.predictions.") for k in state):
        module = DnaBert2ForMaskedLM(config=cfg, add_pooling_layer="bert.pooler.dense.weight" in state)
    else:
        raise KeyMismatchError(f"{folder} holds neither an MLM head (cls.predictions.*) nor a classifier "
                               "(classifier.*); it is not a DNABERT-2 checkpoint we can convert strictly",
                               missing=["cls.predictions.*"])
    load_strict(module, state)
    tokenizer = load_upstream_tokenizer(folder)
    if tokenizer is not None:
        module.attach_tokenizer(tokenizer)
    return module.eval()


def upstream_state_dict(module) -> dict[str, torch.Tensor]:
    """Our weights in upstream's key layout (identical names; the tied decoder weight saved twice, as upstream)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def upstream_config_dict(cfg: DnaBert2Config) -> dict:
    raw = {theirs: getattr(cfg, ours) for theirs, ours in CONFIG_KEYS.items()}
    raw.update(architectures=["BertForMaskedLM"], model_type="bert", hidden_act="gelu",
               auto_map={"AutoModel": "bert_layers.BertModel"}, position_embedding_type="absolute")
    return raw
