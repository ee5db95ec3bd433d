"""ZooDataModule: one way to get data for every family.

``source`` is ``"embedded"`` (a small real sample built from files every machine has), a Hugging
Face dataset id (``datasets.load_dataset``) or local files in the same schema. Splits are
deterministic and leak-free: rows are assigned by a hash of their group (e.g. the source file),
so one group never lands in two splits. Tokenization is ``datasets.map(batched=True)`` with an
on-disk cache keyed by the data, the tokenizer and the settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import datasets
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from zoo.core.init_args import CapturesInitArgs
from zoo.errors import ConfigError, OfflineError

SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                 "val": "validation", "dev": "validation", "test": "test", "testing": "test"}
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
                 ".txt": "text", ".arrow": "arrow"}


def cache_root() -> Path:
    return Path(os.environ.get("ZOO_CACHE", Path.home() / ".cache" / "zoo"))


def stable_hash(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def content_fingerprint(data: datasets.Dataset) -> str:
    """A hash of the rows themselves (in-memory datasets get a new random ``_fingerprint`` each run);
    large file-backed datasets keep the fingerprint ``datasets`` derived from their files."""
    if len(data) > 200_000 and data.cache_files:
        return data._fingerprint
    digest = hashlib.sha256()
    for batch in data.flatten_indices().data.to_batches():
        digest.update(batch.serialize())
    return digest.hexdigest()[:16]


def split_of(group: Any, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Which split a whole group belongs to; stable across machines and Python versions."""
    bucket = int(hashlib.sha1(f"{seed}:{group}".encode()).hexdigest()[:8], 16) / 2**32
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "validation"
    return "train"


def pad_sequences(seqs: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    length = length or max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:length]
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


class ZooDataModule(CapturesInitArgs, pl.LightningDataModule):
    """Base of every family's DataModule.

    Subclasses implement ``build_embedded()`` and usually ``tokenize(batch)`` and ``collate(rows)``;
    they may override ``build_tokenizer(train)`` (pre-training from scratch), ``load_local(path)``
    (special file layouts) and ``describe()``.
    """

    #: how the card names the data (dataset id or a description of the embedded sample)
    dataset_name: ClassVar[str] = "embedded"
    #: rows sharing this column's value always land in the same split
    group_column: ClassVar[str | None] = "group"
    #: columns a local file must have
    required_columns: ClassVar[tuple[str, ...]] = ()
    #: bump when ``tokenize()`` output changes for the same rows, so cached tokenized splits are rebuilt
    tokenize_version: ClassVar[int] = 1

    def __init__(
        self,
        source: str = "embedded",
        batch_size: int = 8,
        max_length: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        limit: int | None = None,
        subset: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ConfigError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                              "and leave rows for training")
        self.source = source
        self.batch_size = batch_size
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.limit = limit
        self.subset = subset
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "datasets"
        self.tokenizer = None
        self.splits: datasets.DatasetDict | None = None
        self._raw: datasets.DatasetDict | None = None

    # ------------------------------------------------------------------ hooks for families
    def build_embedded(self) -> datasets.Dataset | datasets.DatasetDict:
        raise NotImplementedError(f"{type(self).__name__} has no embedded data; pass source=<dataset id or files>")

    def build_tokenizer(self, train: datasets.Dataset):
        """A tokenizer trained on the training split, for pre-training from scratch (default: none)."""
        return None

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        """Batched ``datasets.map`` function; default keeps rows as they are."""
        return batch

    def collate(self, rows: list[dict[str, Any]]) -> Any:
        return torch.utils.data.default_collate(rows)

    def describe(self) -> dict[str, Any]:
        """What the card says about the data."""
        info = {"name": self.dataset_name if self.source == "embedded" else self.source, "source": self.source}
        if self.splits is not None:
            info["rows"] = {k: len(v) for k, v in self.splits.items()}
        return info

    # ------------------------------------------------------------------ source resolution
    def load_source(self) -> datasets.DatasetDict:
        """The raw splits (train / validation / test), deterministic and leak-free."""
        if self._raw is not None:
            return self._raw
        source = self.source
        if source == "embedded":
            data = self.build_embedded()
        elif Path(source).expanduser().exists():
            data = self.load_local(Path(source).expanduser())
        elif source.startswith((".", "/", "~")) or Path(source).suffix.lower() in LOCAL_FORMATS:
            raise ConfigError(f"data source {source!r} looks like a local path but does not exist; "
                              "check the path, or pass source='embedded' or a Hugging Face dataset id")
        else:
            data = self.load_hub(source)
        raw = self._to_splits(data)
        for name in raw:
            missing = [c for c in self.required_columns if c not in raw[name].column_names]
            if missing:
                raise ConfigError(f"data source {source!r} split {name!r} lacks column(s) {missing}; "
                                  f"{type(self).__name__} needs {list(self.required_columns)} "
                                  f"(found {raw[name].column_names})")
        if self.limit:
            raw = datasets.DatasetDict({k: v.select(range(min(self.limit, len(v)))) for k, v in raw.items()})
        self._raw = raw
        return raw

    def load_local(self, path: Path) -> datasets.Dataset | datasets.DatasetDict:
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in LOCAL_FORMATS)
        if not files:
            raise ConfigError(f"no data files ({', '.join(sorted(LOCAL_FORMATS))}) in {path}")
        suffixes = {p.suffix.lower() for p in files}
        if len({LOCAL_FORMATS[s] for s in suffixes}) > 1:
            raise ConfigError(f"{path} mixes file formats {sorted(suffixes)}; keep one format per folder")
        builder = LOCAL_FORMATS[files[0].suffix.lower()]
        kwargs = {"delimiter": "\t"} if ".tsv" in suffixes else {}
        by_split: dict[str, list[str]] = {}
        for p in files:
            split = SPLIT_ALIASES.get(p.stem.lower().split(".")[0])
            if split is None and len(files) > 1:
                raise ConfigError(f"cannot tell which split {p.name} is; name files train.*, dev.* / validation.*, "
                                  "test.* (or pass a single file and let zoo split it)")
            by_split.setdefault(split or "train", []).append(str(p))
        try:
            loaded = datasets.load_dataset(builder, data_files=by_split, cache_dir=str(self.cache_dir / "hf"), **kwargs)
        except Exception as err:  # datasets raises many types for malformed files
            raise ConfigError(f"could not read {path} as {builder}: {err}") from err
        return loaded if len(by_split) > 1 else loaded["train"]

    def load_hub(self, dataset_id: str) -> datasets.DatasetDict:
        try:
            return datasets.load_dataset(dataset_id, self.subset, cache_dir=str(self.cache_dir / "hf"))
        except (ConnectionError, OSError) as err:
            raise OfflineError(
                f"dataset {dataset_id!r} is neither cached nor reachable ({type(err).__name__}: {err}); "
                "connect once to cache it, or pass source='embedded' or a local folder in the same schema"
            ) from err
        except Exception as err:
            raise ConfigError(f"could not load dataset {dataset_id!r}: {err}") from err

    def _to_splits(self, data) -> datasets.DatasetDict:
        if isinstance(data, datasets.DatasetDict):
            named = {SPLIT_ALIASES.get(k.lower(), k): v for k, v in data.items()}
            if "train" in named and ("validation" in named or "test" in named):
                if "validation" not in named:
                    named.update(self._split(named["train"], test=False))
                if "test" not in named:
                    named["test"] = named["validation"]
                return datasets.DatasetDict({k: named[k] for k in ("train", "validation", "test")})
            data = named.get("train", next(iter(named.values())))
        return datasets.DatasetDict(self._split(data))

    def _split(self, data: datasets.Dataset, test: bool = True) -> dict[str, datasets.Dataset]:
        """Assign whole groups to splits by a stable hash; without a group column, each row is a group."""
        if self.group_column and self.group_column in data.column_names:
            groups = data[self.group_column]
        else:
            groups = [json.dumps(row, sort_keys=True, default=str) for row in data]
        test_fraction = self.test_fraction if test else 0.0
        names = [split_of(g, self.seed, self.val_fraction, test_fraction) for g in groups]
        out = {s: data.select([i for i, n in enumerate(names) if n == s]) for s in ("train", "validation", "test")}
        if not test:
            out.pop("test")
        empty = [s for s, d in out.items() if len(d) == 0]
        if empty and len(data) >= 3:
            raise ConfigError(f"split(s) {empty} came out empty from {len(set(groups))} groups; "
                              "use more data or larger val_fraction / test_fraction")
        return out

    def cached(self, name: str, key: Any, build: Callable[[], datasets.Dataset]) -> datasets.Dataset:
        """Build a dataset once per ``key`` and reuse it from disk; written atomically."""
        folder = self.cache_dir / type(self).__name__ / f"{name}-{stable_hash(key)}"
        if folder.exists():
            return datasets.load_from_disk(str(folder))
        data = build()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            data.save_to_disk(str(tmp))
            os.replace(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not folder.exists():
                raise
        return datasets.load_from_disk(str(folder))

    # ------------------------------------------------------------------ Lightning hooks
    def attach_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Under a Trainer only the raw splits load here; tokenization waits for the first dataloader, because
        Lightning restores ``--ckpt_path`` (and with it the checkpoint's tokenizer) after ``setup``."""
        if self.trainer is None:
            self.prepare_splits()
        else:
            self.load_source()

    def prepare_splits(self) -> datasets.DatasetDict:
        """Tokenized splits, with the model's tokenizer when it has one (fine-tuning, --ckpt_path), else a new one."""
        if self.splits is not None:
            return self.splits
        raw = self.load_source()
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if self.tokenizer is None and getattr(model, "tokenizer", None) is not None:
            self.tokenizer = model.tokenizer
        if self.tokenizer is None:
            self.tokenizer = self.build_tokenizer(raw["train"])
        if model is not None and getattr(model, "tokenizer", None) is None and self.tokenizer is not None:
            model.attach_tokenizer(self.tokenizer)  # trained from scratch: the model keeps the data's tokenizer
        self.splits = datasets.DatasetDict({name: self._tokenized(name, ds) for name, ds in raw.items()})
        return self.splits

    def _tokenizer_fingerprint(self) -> str:
        tok = self.tokenizer
        if tok is None:
            return "none"
        backend = getattr(tok, "backend_tokenizer", tok)
        if not hasattr(backend, "to_str"):
            return stable_hash(repr(tok))
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # calling a fast tokenizer changes these two; the vocabulary is what counts
        state.pop("padding", None)
        return stable_hash(state, getattr(tok, "special_tokens_map", None))

    def _tokenized(self, split: str, data: datasets.Dataset) -> datasets.Dataset:
        if type(self).tokenize is ZooDataModule.tokenize:
            return data
        fingerprint = stable_hash(type(self).__qualname__, self.tokenize_version, self.init_args,
                                  content_fingerprint(data), self._tokenizer_fingerprint(), split)
        cache_file = self.cache_dir / "tokenized" / f"{type(self).__name__}-{split}-{fingerprint}.arrow"
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        return data.map(self.tokenize, batched=True, remove_columns=data.column_names, new_fingerprint=fingerprint,
                        cache_file_name=str(cache_file), desc=f"tokenize {split}")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.prepare_splits()
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle, collate_fn=self.collate,
                          num_workers=self.num_workers, generator=generator if shuffle else None,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
