"""CodeT5's data: code for identifier-aware pre-training and (code, summary) pairs for fine-tuning.

``source="embedded"`` builds both from Python's standard library on this machine (functions found
with tree-sitter, split by file so a held-out function never appears in pre-training text). A
Hugging Face id (``google/code_x_glue_ct_code_to_text``, ``code_search_net``) or local files in
their schema (``train.jsonl``/``valid.jsonl``/``test.jsonl``) load through the same columns.
"""

from __future__ import annotations

import ast
import functools
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np

from zoo.core.data import ZooDataModule, pad_sequences
from zoo.errors import ConfigError
from zoo.models.codet5.identifiers import parser_for
from zoo.models.codet5.objectives import IGNORE, code_features, dual_target, span_corrupt
from zoo.models.codet5.tokenizer import sentinel_ids, train_tokenizer

EXTRACTOR_VERSION = 1
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}
COLUMNS = ("code", "code_nodoc", "docstring", "language", "group")


# ---------------------------------------------------------------------- the embedded sample
def stdlib_files(root: str | None = None) -> list[Path]:
    """Python files of the standard library, tests excluded, in a stable order."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    return sorted(p for p in base.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(base).parts[:-1]))


def _first_line(literal: str) -> str:
    try:
        text = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        text = literal.strip("rbuRBU").strip("'\"")
    if not isinstance(text, str):
        return ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def functions_of(source: bytes, group: str) -> list[dict[str, str]]:
    """Every ``def`` in a Python file: its code, its code without docstring, its docstring's first line."""
    tree = parser_for("python").parse(source)
    rows, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(reversed(node.children))
        if node.type != "function_definition" or node.end_byte - node.start_byte > 20000:
            continue
        indent = " " * node.start_point[1]
        code = textwrap.dedent(indent + source[node.start_byte:node.end_byte].decode("utf-8", errors="replace"))
        body = node.child_by_field_name("body")
        first = body.named_children[0] if body is not None and body.named_children else None
        docstring, code_nodoc = "", code
        if (first is not None and first.type == "expression_statement" and first.named_children
                and first.named_children[0].type == "string"):
            docstring = _first_line(source[first.start_byte:first.end_byte].decode("utf-8", errors="replace"))
            lines = code.splitlines()
            cut = (first.start_point[0] - node.start_point[0], first.end_point[0] - node.start_point[0])
            rest = lines[:cut[0]] + lines[cut[1] + 1:]
            has_body = len(body.named_children) > 1
            code_nodoc = "\n".join(rest) + "\n" if has_body else ""
        rows.append({"code": code, "code_nodoc": code_nodoc, "docstring": docstring, "language": "python",
                     "group": group})
    return rows


def build_stdlib_functions(root: str | None = None) -> datasets.Dataset:
    base = Path(root or sysconfig.get_paths()["stdlib"])
    rows = []
    for path in stdlib_files(str(base)):
        rows += functions_of(path.read_bytes(), str(path.relative_to(base)))
    if not rows:
        raise ConfigError(f"no Python functions found under {base}; pass source=<dataset id or local files>")
    return datasets.Dataset.from_list(rows)


# ---------------------------------------------------------------------- other schemas
def normalise(batch: dict[str, list], language: str) -> dict[str, list]:
    """CodeXGLUE code-to-text / CodeSearchNet / zoo columns -> zoo columns (``COLUMNS``)."""
    n = len(next(iter(batch.values())))
    pick = lambda *names: next((batch[k] for k in names if k in batch), None)  # noqa: E731
    code = pick("code", "func_code_string", "original_string", "whole_func_string")
    if code is None:
        raise ConfigError(f"data has none of the code columns code / func_code_string / original_string "
                          f"(found {sorted(batch)}); use the CodeXGLUE code-to-text or CodeSearchNet schema")
    code_tokens = pick("code_tokens", "func_code_tokens")
    doc_tokens = pick("docstring_tokens", "func_documentation_tokens")
    docstring = pick("docstring", "func_documentation_string")
    out = {"code": code}
    # CodeXGLUE summarisation reads the token lists (docstring removed from the code) when present
    out["code_nodoc"] = batch.get("code_nodoc") or ([" ".join(t) for t in code_tokens] if code_tokens else code)
    if doc_tokens is not None and "code_nodoc" not in batch:
        out["docstring"] = [" ".join(t) for t in doc_tokens]
    else:
        out["docstring"] = [_first_line(repr(d)) if d else "" for d in (docstring or [""] * n)]
    out["language"] = pick("language") or [language] * n
    out["group"] = pick("group", "path", "func_path_in_repository", "url") or [str(i) for i in range(n)]
    return out


class CodeT5Data(ZooDataModule):
    """Shared source handling of the CodeT5 DataModules (columns ``code, code_nodoc, docstring, language, group``)."""

    dataset_name = "Python standard library functions (split by file)"
    required_columns = COLUMNS

    def __init__(self, source: str = "embedded", batch_size: int = 16, max_length: int = 256,
                 max_target_length: int = 128, tokenizer_vocab_size: int = 32000, tokenizer_min_frequency: int = 3,
                 language: str = "python", val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0, limit: int | None = None, subset: str | None = None,
                 cache_dir: str | None = None):
        super().__init__(source=source, batch_size=batch_size, max_length=max_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed, num_workers=num_workers, limit=limit,
                         subset=subset, cache_dir=cache_dir)
        self.max_target_length = max_target_length
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.tokenizer_min_frequency = tokenizer_min_frequency
        self.language = language
        parser_for(language)  # fail now, with the pip command, if the grammar is missing

    def build_embedded(self) -> datasets.Dataset:
        key = ("stdlib", sys.version, sysconfig.get_paths()["stdlib"], EXTRACTOR_VERSION)
        return self.cached("stdlib-functions", key, build_stdlib_functions)

    def _normalised(self, data):
        if isinstance(data, datasets.DatasetDict):
            return datasets.DatasetDict({k: self._normalised(v) for k, v in data.items()})
        if set(COLUMNS) <= set(data.column_names):
            return data
        return data.map(functools.partial(normalise, language=self.language), batched=True,
                        remove_columns=data.column_names, desc="normalise columns")

    def load_local(self, path: Path):
        return self._normalised(super().load_local(path))

    def load_hub(self, dataset_id: str):
        if dataset_id == "google/code_x_glue_ct_code_to_text" and self.subset is None:
            self.subset = self.language  # that dataset has one config per language
        return self._normalised(super().load_hub(dataset_id))

    def build_tokenizer(self, train: datasets.Dataset):
        texts = (row["code"] + "\n" + row["docstring"] for row in train)
        return train_tokenizer(texts, vocab_size=self.tokenizer_vocab_size, min_frequency=self.tokenizer_min_frequency)

    def _loader(self, split: str, shuffle: bool):
        loader = super()._loader(split, shuffle)
        loader.collate_fn = functools.partial(self.collate, train=split == "train")
        return loader

    def _pad(self, inputs: list[list[int]], labels: list[list[int]] | None, objective: str) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        ids = pad_sequences(inputs, pad)
        batch = {"objective": objective, "input_ids": ids, "attention_mask": (ids != pad).long()}
        if labels is not None:
            batch["labels"] = pad_sequences(labels, IGNORE)
        return batch


class CodePretrainData(CodeT5Data):
    """Identifier-aware denoising: each training batch is MSP, IT or MIP (or dual generation), uniformly at random.

    Evaluation batches hold all of MSP, IT and MIP (masks drawn with a fixed seed), so validation
    measures every objective on the same held-out files.
    """

    tokenize_version = 2  # 2: MIP targets put a space before each name

    def __init__(self, objectives: list[str] = ("msp", "it", "mip"), mask_rate: float = 0.15, max_span: int = 5,
                 source: str = "embedded", batch_size: int = 16, max_length: int = 256,
                 max_target_length: int = 128, tokenizer_vocab_size: int = 32000, tokenizer_min_frequency: int = 3,
                 language: str = "python", val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0, limit: int | None = None, subset: str | None = None,
                 cache_dir: str | None = None):
        super().__init__(source=source, batch_size=batch_size, max_length=max_length,
                         max_target_length=max_target_length, tokenizer_vocab_size=tokenizer_vocab_size,
                         tokenizer_min_frequency=tokenizer_min_frequency, language=language,
                         val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, num_workers=num_workers,
                         limit=limit, subset=subset, cache_dir=cache_dir)
        unknown = sorted(set(objectives) - {"msp", "it", "mip", "dual"})
        if unknown or not objectives:
            raise ConfigError(f"unknown pre-training objective(s) {unknown or objectives}; choose from "
                              "['msp', 'it', 'mip', 'dual']")
        if not 0 < mask_rate < 1 or max_span < 1:
            raise ConfigError(f"mask_rate={mask_rate} must be in (0, 1) and max_span={max_span} >= 1")
        self.objectives = list(objectives)
        self.mask_rate = mask_rate
        self.max_span = max_span
        self._rng = np.random.default_rng(seed)

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        out = code_features(self.tokenizer, batch["code"], batch["language"], self.max_length,
                            self.max_target_length)
        nl = self.tokenizer(batch["docstring"], truncation=True, max_length=self.max_target_length)["input_ids"]
        code = self.tokenizer(batch["code_nodoc"], truncation=True, max_length=self.max_length)["input_ids"]
        out.update(nl_ids=nl, code_nodoc_ids=code, has_doc=[bool(d) and bool(c) for d, c in
                                                             zip(batch["docstring"], batch["code_nodoc"])],
                   language=batch["language"])
        return out

    def collate(self, rows: list[dict[str, Any]], train: bool = True) -> dict[str, Any]:
        if train:
            return self.objective_batch(rows, str(self._rng.choice(self.objectives)), self._rng)
        rng = np.random.default_rng([self.seed, len(rows), sum(rows[0]["input_ids"])])
        return {"objective": "all", **{o: self.objective_batch(rows, o, rng) for o in ("msp", "it", "mip")}}

    def objective_batch(self, rows: list[dict[str, Any]], objective: str, rng: np.random.Generator) -> dict:
        if objective == "msp":
            sentinels = sentinel_ids(self.tokenizer)
            pairs = [span_corrupt(r["input_ids"], r["word_ids"], sentinels, rng, self.mask_rate, self.max_span)
                     for r in rows]
            return self._pad([s for s, _ in pairs], [t[: self.max_target_length] for _, t in pairs], "msp")
        if objective == "mip":
            return self._pad([r["mip_input_ids"] for r in rows], [r["mip_labels"] for r in rows], "mip")
        if objective == "it":
            batch = self._pad([r["input_ids"] for r in rows], None, "it")
            batch["it_labels"] = pad_sequences([r["it_labels"] for r in rows], IGNORE)
            return batch
        paired = [r for r in rows if r["has_doc"]]
        if not paired:  # no docstring in this batch: dual generation has nothing to learn from
            return self.objective_batch(rows, "msp", rng)
        if rng.random() < 0.5:  # PL -> NL
            return self._pad([r["code_nodoc_ids"] for r in paired],
                             [dual_target(self.tokenizer, r["nl_ids"], "en") for r in paired], "dual")
        return self._pad([r["nl_ids"] for r in paired],
                         [dual_target(self.tokenizer, r["code_nodoc_ids"], r["language"])[: self.max_target_length]
                          for r in paired], "dual")


class CodeSummarizationData(CodeT5Data):
    """Fine-tuning pairs: code (docstring removed) -> its docstring's first line (``pl2nl``), or the reverse."""

    def __init__(self, direction: Literal["pl2nl", "nl2pl"] = "pl2nl", language_ids: bool = False,
                 source: str = "embedded", batch_size: int = 16, max_length: int = 256,
                 max_target_length: int = 128, tokenizer_vocab_size: int = 32000, tokenizer_min_frequency: int = 3,
                 language: str = "python", val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0, limit: int | None = None, subset: str | None = None,
                 cache_dir: str | None = None):
        super().__init__(source=source, batch_size=batch_size, max_length=max_length,
                         max_target_length=max_target_length, tokenizer_vocab_size=tokenizer_vocab_size,
                         tokenizer_min_frequency=tokenizer_min_frequency, language=language,
                         val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, num_workers=num_workers,
                         limit=limit, subset=subset, cache_dir=cache_dir)
        if direction not in ("pl2nl", "nl2pl"):
            raise ConfigError(f"direction={direction!r}; use 'pl2nl' (summarization) or 'nl2pl' (generation)")
        self.direction = direction
        self.language_ids = language_ids

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        keep = [i for i, (c, d) in enumerate(zip(batch["code_nodoc"], batch["docstring"]))
                if c.strip() and len(d.split()) >= 2]  # pairs only: a one-word summary is no summary
        code = [batch["code_nodoc"][i] for i in keep]
        doc = [batch["docstring"][i] for i in keep]
        source, target = (code, doc) if self.direction == "pl2nl" else (doc, code)
        src_len, tgt_len = (self.max_length, self.max_target_length)
        if self.direction == "nl2pl":
            src_len, tgt_len = self.max_target_length, self.max_length
        inputs = self.tokenizer(source, truncation=True, max_length=src_len)["input_ids"]
        labels = self.tokenizer(target, truncation=True, max_length=tgt_len)["input_ids"]
        if self.language_ids:
            langs = ["en" if self.direction == "pl2nl" else batch["language"][i] for i in keep]
            labels = [dual_target(self.tokenizer, y, lang) for y, lang in zip(labels, langs)]
        return {"input_ids": inputs, "labels": labels, "source": source, "target": target}

    def collate(self, rows: list[dict[str, Any]], train: bool = True) -> dict[str, Any]:
        batch = self._pad([r["input_ids"] for r in rows], [r["labels"] for r in rows], "seq2seq")
        batch["target"] = [r["target"] for r in rows]
        return batch

    def held_out_example(self, index: int = 0) -> dict[str, str]:
        """One (code, summary) pair from the test split, for demos."""
        test = self.load_source()["test"]
        pairs = [r for r in test if r["code_nodoc"].strip() and len(r["docstring"].split()) >= 2]
        return pairs[index % len(pairs)]

