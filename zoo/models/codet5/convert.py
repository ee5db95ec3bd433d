"""Salesforce's published CodeT5 checkpoints -> zoo ``CodeT5Module``.

Upstream files are a transformers T5 ``config.json``, ``pytorch_model.bin`` (or
``model.safetensors``) in the plain HF T5 key layout, and for the pre-trained models a RoBERTa
byte-level BPE (``vocab.json``, ``merges.txt``, ``added_tokens.json``). The per-task
``-codexglue-*`` checkpoints ship no tokenizer: they use ``Salesforce/codet5-base``'s.

Revisions: ``UPSTREAM_REVISION`` holds the revision each repo is fetched at. They read ``main``
until someone with Hub access records the commit hashes (no network here to look them up).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from zoo.errors import CheckpointFormatError, KeyMismatchError
from zoo.models.codet5.module import CodeT5Module
from zoo.models.codet5.tokenizer import NUM_SENTINELS, add_codet5_specials, sentinel
from zoo.registry import UpstreamCheckpoint

#: weights tied to ``shared.weight`` that older or newer exports may leave out
TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")
#: keys old transformers versions saved although T5 never uses them
LEGACY_UNUSED = re.compile(r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json")


def init_args_from_hf(config: dict) -> dict:
    """A transformers ``T5Config`` dict -> ``CodeT5Module`` init args."""
    if config.get("model_type", "t5") != "t5":
        raise CheckpointFormatError(f"config.json has model_type={config.get('model_type')!r}; CodeT5 checkpoints "
                                    "are 't5' (classification checkpoints such as -codexglue-clone are not supported)")
    if config.get("tie_word_embeddings", True) is False:
        raise CheckpointFormatError("config.json has tie_word_embeddings=false (a T5 v1.1-style untied head); "
                                    "CodeT5 checkpoints are tied and transformers 5 T5 cannot hold an untied head")
    num_layers = config["num_layers"]
    return {
        "vocab_size": config["vocab_size"], "d_model": config["d_model"], "d_ff": config["d_ff"],
        "d_kv": config["d_kv"], "num_layers": num_layers,
        "num_decoder_layers": config.get("num_decoder_layers") or num_layers, "num_heads": config["num_heads"],
        "relative_attention_num_buckets": config.get("relative_attention_num_buckets", 32),
        "relative_attention_max_distance": config.get("relative_attention_max_distance", 128),
        "dropout_rate": config.get("dropout_rate", 0.1), "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6),
        "feed_forward_proj": config.get("feed_forward_proj", "relu"),
        "tie_word_embeddings": config.get("tie_word_embeddings", True),
        "pad_token_id": config.get("pad_token_id", 0), "bos_token_id": config.get("bos_token_id", 1),
        "eos_token_id": config.get("eos_token_id", 2),
        "decoder_start_token_id": config.get("decoder_start_token_id", 0),
    }


def read_upstream_weights(folder: Path) -> dict[str, torch.Tensor]:
    """``model.safetensors`` if present, else ``pytorch_model.bin`` read with ``weights_only=True``."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as err:  # a pickle with code in it, or a truncated file
            raise CheckpointFormatError(f"{folder / 'pytorch_model.bin'} is not a plain tensor state dict "
                                        f"({err}); re-download it") from err
    raise CheckpointFormatError(f"{folder} has neither model.safetensors nor pytorch_model.bin; download the "
                                "checkpoint's weight file")


def load_t5_state(module: CodeT5Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load HF T5 keys into ``module.model``; refuse partial loads, naming every key that does not fit."""
    state = {k: v for k, v in state.items() if not LEGACY_UNUSED.fullmatch(k)}
    expected = module.model.state_dict()
    tied = set(TIED)
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"{where} does not fit CodeT5Module({module.config.d_model=}, {module.config.num_layers=}):"]
        lines += [f"  missing: {k}" for k in missing] + [f"  unexpected: {k}" for k in unexpected]
        lines += [f"  shape mismatch: {k}" for k in mismatched]
        lines.append("Is it a T5 encoder-decoder checkpoint with the config.json next to it? "
                     "Download both files of the same revision.")
        raise KeyMismatchError("\n".join(lines), missing, unexpected, mismatched)
    for key in tied:  # fill tied names from shared so load_state_dict sees a complete dict
        state.setdefault(key, state["shared.weight"])
    if not torch.equal(state["lm_head.weight"], state["shared.weight"]):
        raise CheckpointFormatError(f"{where}: lm_head.weight differs from shared.weight, but CodeT5 ties them; "
                                    "this is not a CodeT5 checkpoint")
    module.model.load_state_dict(state, strict=True)
    module.model.tie_weights()


def load_upstream_tokenizer(folder: Path):
    """RoBERTa byte-level BPE + CodeT5's sentinels at the ids upstream gave them; None without tokenizer files."""
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return None
    from transformers import RobertaTokenizer

    # transformers 5 takes vocab=/merges= (vocab_file= is silently ignored)
    tokenizer = RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    added = folder / "added_tokens.json"
    if added.is_file():
        table = json.loads(added.read_text())
        tokens = [t for t, _ in sorted(table.items(), key=lambda kv: kv[1]) if t not in tokenizer.get_vocab()]
        tokenizer.add_special_tokens({"extra_special_tokens": tokens})
        wrong = {t: tokenizer.convert_tokens_to_ids(t) for t, i in table.items()
                 if tokenizer.convert_tokens_to_ids(t) != i}
        if wrong:
            raise CheckpointFormatError(f"{added} gives ids that do not follow vocab.json ({list(wrong)[:3]}...); "
                                        "the tokenizer files come from different revisions")
    else:
        add_codet5_specials(tokenizer, languages=False)
    if tokenizer.convert_tokens_to_ids(sentinel(NUM_SENTINELS - 1)) == tokenizer.unk_token_id:
        add_codet5_specials(tokenizer, languages=False)
    return tokenizer


def convert_codet5(folder: str | Path) -> CodeT5Module:
    """A folder of upstream CodeT5 files -> a ready ``CodeT5Module`` (eval mode, tokenizer attached if shipped)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointFormatError(f"{folder} has no config.json; it is not a transformers T5 checkpoint folder")
    config = json.loads((folder / "config.json").read_text())
    module = CodeT5Module(**init_args_from_hf(config))
    load_t5_state(module, read_upstream_weights(folder), str(folder))
    tokenizer = load_upstream_tokenizer(folder)
    if tokenizer is not None:
        module.attach_tokenizer(tokenizer)
    return module.eval()


# ---------------------------------------------------------------------- the published checkpoints
UPSTREAM_REVISION = "main"
_GENERATION_TASKS = tuple(f"sum-{lang}" for lang in ("python", "go", "java", "javascript", "php", "ruby")) + (
    "translate-cs-java", "translate-java-cs", "refine-small", "refine-medium", "concode")


def _checkpoint(repo_id: str, model: str, description: str) -> UpstreamCheckpoint:
    return UpstreamCheckpoint(repo_id=repo_id, revision=UPSTREAM_REVISION, model=model, converter=convert_codet5,
                              files=("config.json",), optional_files=("pytorch_model.bin", "model.safetensors")
                              + TOKENIZER_FILES, license="apache-2.0", description=description)


UPSTREAM = {
    "codet5-small": (_checkpoint("Salesforce/codet5-small", "codet5-small", "CodeT5-small, pre-trained"),),
    "codet5-base": (_checkpoint("Salesforce/codet5-base", "codet5-base", "CodeT5-base, pre-trained"),
                    _checkpoint("Salesforce/codet5-base-multi-sum", "codet5-base",
                                "CodeT5-base fine-tuned on multi-lingual code summarization"))
                   + tuple(_checkpoint(f"Salesforce/codet5-base-codexglue-{task}", "codet5-base",
                                       f"CodeT5-base fine-tuned on CodeXGLUE {task} (no tokenizer files)")
                           for task in _GENERATION_TASKS),
    "codet5-large": (_checkpoint("Salesforce/codet5-large", "codet5-large", "CodeT5-large (CodeRL), pre-trained"),),
}
