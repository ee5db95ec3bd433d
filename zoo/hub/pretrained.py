"""The hub format: one folder = one Hugging Face Hub repository.

    config.json        {"format_version", "zoo_version", "family", "class", "init_args", "files": {name: sha256}}
    model.safetensors  weights only (tied tensors stored once)
    tokenizer/         whenever the family tokenizes
    README.md          the generated model card
    results.json       metrics measured by the run the card quotes (optional)

Format migrations: ``MIGRATIONS[v]`` upgrades a config of version ``v`` to ``v + 1``; a folder
written by a newer zoo is refused with the fix (upgrade zoo).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers.initialization import guard_torch_init_functions

from zoo import registry
from zoo.core.data import cache_root
from zoo.core.quant import quantize_linear_layers
from zoo.errors import (
    CheckpointFormatError,
    ConfigError,
    FormatVersionError,
    IntegrityError,
    KeyMismatchError,
    OfflineError,
    UnknownModelError,
    ZooError,
)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
CARD_NAME = "README.md"
RESULTS_NAME = "results.json"
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def zoo_version() -> str:
    from zoo import __version__

    return __version__


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- save
def _dedupe_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store tensors that share memory (tied weights) once; return the kept tensors and the aliases."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        kept[name] = tensor.to("cpu").contiguous().clone()  # clone: views of one storage cannot be saved
    return kept, aliases


@contextlib.contextmanager
def _staging_folder(target: Path) -> Iterator[Path]:
    """Write into a hidden sibling folder and swap it in only when complete: nothing half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "x")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_claim(claim: dict | str | os.PathLike | None) -> tuple[dict | None, Path | None]:
    """A claim-results dict (from ``bench/results/<family>_claim.json``) and its figure, if it names one
    (``"figure"``: a file beside the JSON, e.g. a sample grid), which the card then shows."""
    if claim is None:
        return None, None
    base = Path.cwd()
    if not isinstance(claim, dict):
        path = Path(claim)
        try:
            claim, base = json.loads(path.read_text()), path.parent
        except (OSError, ValueError) as err:
            raise ConfigError(f"claim results {path} cannot be read as JSON: {err}") from err
    figure = claim.get("figure")
    if not figure:
        return claim, None
    figure_path = base / figure
    if not figure_path.is_file():
        raise ConfigError(f"claim results name figure {figure!r}, but {figure_path} does not exist; "
                          "run the bench script that writes it")
    return claim, figure_path


def save_pretrained(module, folder: str | os.PathLike, *, results: dict | None = None, card: bool = True,
                    claim: dict | str | os.PathLike | None = None, run: dict | None = None,
                    base_model: str | None = None, model_name: str | None = None, repo_id: str | None = None,
                    overwrite: bool = True) -> Path:
    """Write ``module`` as a hub folder (format in the module docstring) and return its path.

    ``results``: ``{"validation": {"dataset": {...}, "metrics": {"bleu": 21.3}}, ...}`` measured
    by a validate/test run; ``claim``: a ``bench/results/<family>_claim.json`` path or dict (its
    ``figure`` is copied into the folder and shown in the card); ``run``: the
    run record (defaults to the module's own); ``base_model``: the upstream repo it came from;
    ``model_name`` / ``repo_id``: the card's title (default: the folder's name) and usage snippet.
    """
    target = Path(folder).expanduser()
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} exists; pass overwrite=True or choose another folder")
    if target.exists() and any(target.iterdir()) and not (target / CONFIG_NAME).exists():
        raise ConfigError(f"{target} exists and is not a zoo hub folder; refusing to replace it")
    entry = registry.family_of_class(type(module))
    init_args = module.init_args
    claim, figure = load_claim(claim)
    with _staging_folder(target) as staging:
        if figure is not None:
            shutil.copyfile(figure, staging / figure.name)
        tensors, aliases = _dedupe_tensors(module.state_dict())
        metadata = {"format": "pt", "zoo_class": registry.class_path(type(module)), "aliases": json.dumps(aliases)}
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata=metadata)
        if getattr(module, "tokenizer", None) is not None:
            module.save_tokenizer(staging / TOKENIZER_DIR)
        if results:
            (staging / RESULTS_NAME).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        config = {
            "format_version": FORMAT_VERSION,
            "zoo_version": zoo_version(),
            "family": entry.family,
            "class": registry.class_path(type(module)),
            "init_args": init_args,
        }
        if base_model:
            config["base_model"] = base_model
        if card:
            from zoo.hub.card import render_card

            text = render_card(module, config=config, results=results, run=run or module.run_record(),
                               claim=claim, base_model=base_model, model_name=model_name or target.name,
                               repo_id=repo_id)
            (staging / CARD_NAME).write_text(text, encoding="utf-8")
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        config["files"] = {p.relative_to(staging).as_posix(): sha256_file(p) for p in files}
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return target


# ---------------------------------------------------------------------------------------------- load
@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build a module with its parameters on the meta device (buffers stay real): no double init."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            param = self._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        if param is not None:
            param._is_hf_initialized = True  # transformers' (guarded) init functions then skip it

    nn.Module.register_parameter = register
    try:
        with guard_torch_init_functions():
            yield
    finally:
        nn.Module.register_parameter = original


def _tie_groups(module: nn.Module) -> list[list[tuple[str, nn.Module, str]]]:
    """Parameters shared by several modules (tied embeddings), as (qualified name, owner, attribute)."""
    groups: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for name, param in sub._parameters.items():
            if param is not None:
                groups.setdefault(id(param), []).append((f"{prefix}.{name}" if prefix else name, sub, name))
    return [g for g in groups.values() if len(g) > 1]


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        hint = ""
        if (folder / "pytorch_model.bin").exists() or (folder / "model.safetensors").exists():
            hint = " It looks like an upstream transformers checkpoint: convert it with `zoo convert FAMILY SRC OUT`."
        raise CheckpointFormatError(f"{folder} is not a zoo hub folder: {CONFIG_NAME} is missing.{hint} "
                                    "A Lightning .ckpt becomes a hub folder with `zoo export CKPT OUT`.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointFormatError(f"{path} is not valid JSON ({err}); re-download or re-export the folder") from err
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{path} must hold a JSON object")
    version = config.get("format_version")
    if not isinstance(version, int):
        raise CheckpointFormatError(f"{path} has no integer format_version; it was not written by zoo")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{folder} uses hub format version {version} (written by zoo {config.get('zoo_version', '?')}); "
            f"this zoo {zoo_version()} reads up to version {FORMAT_VERSION}. Upgrade zoo: pip install -U zoo"
        )
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise FormatVersionError(f"no migration from hub format version {version}; re-export with a current zoo")
        config = MIGRATIONS[version](config)
        version = config["format_version"]
    for key in ("class", "init_args", "files"):
        if key not in config:
            raise CheckpointFormatError(f"{path} lacks {key!r}; the folder is incomplete, re-export it")
    return config


class _VerifiedFiles:
    """Files whose sha256 was checked, keyed by (size, mtime, inode) like git's index: a file that is
    truncated, rewritten or replaced is hashed again; an untouched one is not re-read on every load.
    ``ZOO_VERIFY=always`` re-hashes on every load."""

    def __init__(self):
        self.path = cache_root() / "verified-files.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def _key(path: Path) -> tuple[str, list[int]]:
        stat = path.stat()
        return str(path.resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]

    def known(self, path: Path, sha: str) -> bool:
        if os.environ.get("ZOO_VERIFY") == "always":
            return False
        name, stamp = self._key(path)
        return self.entries.get(name) == [*stamp, sha]

    def remember(self, path: Path, sha: str) -> None:
        name, stamp = self._key(path)
        self.entries[name] = [*stamp, sha]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
        except OSError:  # a read-only cache only costs re-hashing next time
            pass


def verify_files(folder: Path, files: dict[str, str]) -> None:
    if WEIGHTS_NAME not in files:
        raise CheckpointFormatError(f"{folder}/{CONFIG_NAME} lists no {WEIGHTS_NAME}; re-export the folder")
    verified = _VerifiedFiles()
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path} is listed in {CONFIG_NAME} but missing; the download or copy is incomplete "
                                 "(re-download, e.g. with force_download, or re-export)")
        if verified.known(path, expected):
            continue
        actual = sha256_file(path)
        if actual == expected:
            verified.remember(path, actual)
        else:
            raise IntegrityError(f"{path} does not match its sha256 in {CONFIG_NAME} (expected {expected[:12]}…, "
                                 f"got {actual[:12]}…): the file is corrupted, truncated or was edited. Delete it and "
                                 "download again (force_download=True) or re-export the folder.")


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointFormatError(f"{path} is not a readable safetensors file ({err}); it is truncated or "
                                    "corrupt: download or export it again") from err
    return tensors, json.loads(metadata.get("aliases", "{}"))


def check_keys(module: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str], strict: bool,
               where: str, ties: list | None = None) -> None:
    """Name every missing, unexpected or mis-shaped key (strict), before anything is loaded."""
    expected = module.state_dict(keep_vars=True)
    tied = {qualified for group in (_tie_groups(module) if ties is None else ties) for qualified, _, _ in group}
    missing = [k for k in expected if k not in tensors and k not in aliases and k not in tied]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in tensors if k in expected and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"{where} does not fit {type(module).__name__}:"]
        lines += [f"  missing: {k}" for k in missing] if strict else []
        lines += [f"  unexpected: {k}" for k in unexpected] if strict else []
        lines += [f"  shape mismatch: {k}" for k in mismatched]
        lines.append("The config's init_args and the weights disagree (a different variant or an edited config); "
                     "load the matching folder, or pass strict=False to skip missing/unexpected keys.")
        raise KeyMismatchError("\n".join(lines), missing, unexpected, mismatched)


def assign_state(module: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str] | None = None,
                 ties: list | None = None) -> None:
    """Load tensors into a module built by ``parameters_on_meta`` and restore its weight ties."""
    ties = _tie_groups(module) if ties is None else ties  # before loading: assign=True breaks the sharing
    for alias, target in (aliases or {}).items():
        if alias not in tensors and target in tensors:
            tensors[alias] = tensors[target]
    module.load_state_dict(tensors, strict=False, assign=True)
    for group in ties:  # assign=True replaced one side of each tie: point the others at it
        loaded = [getattr(sub, name) for _, sub, name in group if getattr(sub, name).device.type != "meta"]
        if loaded:
            for _, sub, name in group:
                setattr(sub, name, loaded[0])


def _instantiate(cls: type, init_args: dict, on_meta: bool):
    try:
        if on_meta:
            with parameters_on_meta():
                return cls(**init_args)
        return cls(**init_args)
    except TypeError as err:
        raise CheckpointFormatError(f"init_args in {CONFIG_NAME} do not fit {cls.__name__}: {err}; "
                                    "the folder was written by a different version of this family") from err


def load_folder(folder: str | os.PathLike, *, map_location: str | torch.device = "cpu", strict: bool = True,
                quantize: str | None = None):
    """Build the registered class named in ``config.json`` and load its verified weights."""
    folder = Path(folder)
    config = read_config(folder)
    cls = registry.resolve_class(config["class"])
    verify_files(folder, config["files"])
    tensors, aliases = read_weights(folder / WEIGHTS_NAME)
    module = _instantiate(cls, config["init_args"], on_meta=True)
    ties = _tie_groups(module)
    check_keys(module, tensors, aliases, strict, str(folder / WEIGHTS_NAME), ties)
    assign_state(module, tensors, aliases, ties)
    if any(t.device.type == "meta" for t in list(module.parameters()) + list(module.buffers())):
        if strict:  # pragma: no cover - check_keys names missing keys first
            raise CheckpointFormatError(f"{folder}: some weights were not in the file")
        module = _instantiate(cls, config["init_args"], on_meta=False)  # rare: initialise what is missing
        module.load_state_dict(tensors, strict=False)
    module.eval()
    if (folder / TOKENIZER_DIR).is_dir():
        module.attach_tokenizer(cls.load_tokenizer(folder / TOKENIZER_DIR))
    if (folder / RESULTS_NAME).is_file():
        module.hub_results = json.loads((folder / RESULTS_NAME).read_text())
    module.hub_config = config
    return _finish(module, map_location, quantize)


def _finish(module, map_location, quantize):
    if quantize is not None:
        quantize_linear_layers(module, quantize, getattr(module, "keep_in_full_precision", ()))
    return module.to(map_location) if quantize is None else module


# ---------------------------------------------------------------------------------------------- hub
def _hub_download_error(source: str, err: Exception) -> ZooError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, LocalEntryNotFoundError):
        return OfflineError(f"{source!r} is not in the local Hugging Face cache and the Hub cannot be reached "
                            "(offline mode or no network). Connect once to download it, pass cache_dir= where it was "
                            "cached, or load a local folder.")
    if isinstance(err, GatedRepoError):
        return ConfigError(f"{source!r} is gated: accept its terms on the Hub and pass token=")
    if isinstance(err, RevisionNotFoundError):
        return UnknownModelError(f"{source!r} has no such revision ({err}); list its branches and tags on the Hub")
    if isinstance(err, RepositoryNotFoundError):
        suggestions = registry._suggest(source, registry.list_models() + [u.repo_id for u in registry.list_upstream()])
        hint = f" Did you mean {', '.join(map(repr, suggestions))}?" if suggestions else ""
        return UnknownModelError(f"no Hub repository {source!r} (or it is private: pass token=).{hint}", suggestions)
    return ZooError(f"could not download {source!r}: {err}")


def download_snapshot(repo_id: str, *, revision=None, cache_dir=None, local_files_only=False, token=None,
                      allow_patterns=None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=local_files_only, allow_patterns=allow_patterns))
    except Exception as err:
        raise _hub_download_error(repo_id, err) from err


def load_upstream(repo_id: str, *, revision=None, cache_dir=None, local_files_only=False, token=None):
    """Download a known upstream checkpoint at its pinned revision and convert it."""
    upstream = registry.find_upstream(repo_id)
    files = list(upstream.files) + list(upstream.optional_files)
    folder = download_snapshot(repo_id, revision=revision or upstream.revision, cache_dir=cache_dir,
                               local_files_only=local_files_only, token=token, allow_patterns=files)
    missing = [f for f in upstream.files if not (folder / f).exists()]
    if missing:
        raise CheckpointFormatError(f"{repo_id}@{revision or upstream.revision} lacks {missing}; "
                                    "the upstream layout changed: pin the registered revision")
    module = upstream.converter(folder)
    # the snapshot folder is named after the commit it holds: record that, even when "main" was asked for
    module.converted_from = {"repo_id": repo_id, "revision": folder.name if _COMMIT.match(folder.name)
                             else revision or upstream.revision}
    return module


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None,
                    local_files_only: bool = False, token: str | None = None,
                    map_location: str | torch.device = "cpu", strict: bool = True, quantize: str | None = None):
    """Load a zoo model from a local hub folder, a Hub repo id, or a known upstream checkpoint id.

    Only registered classes are instantiated; every file's sha256 is verified; parameters are
    built on the meta device and filled from ``model.safetensors``. ``HF_HUB_OFFLINE=1`` and
    ``local_files_only=True`` load from the cache without any network call.
    """
    if quantize not in (None, "int8", "nf4"):
        raise ConfigError(f"quantize={quantize!r} is not supported; use None, 'int8' or 'nf4'")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return load_folder(path, map_location=map_location, strict=strict, quantize=quantize)
    if path.is_file():
        raise ConfigError(f"{text} is a file; pass its folder. A Lightning .ckpt becomes a hub folder with "
                          "`zoo export CKPT OUT`.")
    if registry.find_upstream(text) is not None:
        module = load_upstream(text, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                               token=token)
        return _finish(module.eval(), map_location, quantize)
    if "/" not in text and registry.is_model(text):
        raise ConfigError(f"{text!r} is a model architecture without published zoo weights; use "
                          f"zoo.create_model({text!r}) for a randomly initialised one, or pass a Hub id or folder")
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        entries = registry.list_models()
        suggestions = registry._suggest(text, entries)
        hint = f" Did you mean {', '.join(map(repr, suggestions))}?" if suggestions else ""
        raise UnknownModelError(f"{text!r} is neither an existing folder nor a Hub repo id ('org/name').{hint}",
                                suggestions)
    folder = download_snapshot(text, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                               token=token)
    return load_folder(folder, map_location=map_location, strict=strict, quantize=quantize)


def push_to_hub(folder_or_module, repo_id: str, *, revision: str | None = None, branch: str | None = None,
                private: bool = False, token: str | None = None, create_pr: bool = False,
                commit_message: str | None = None, endpoint: str | None = None):
    """Upload a hub folder (or a module, saved first) as ONE commit; returns the commit info."""
    from huggingface_hub import HfApi

    branch = branch or revision
    api = HfApi(endpoint=endpoint, token=token)
    with contextlib.ExitStack() as stack:
        if isinstance(folder_or_module, (str, os.PathLike)):
            folder = Path(folder_or_module)
            config = read_config(folder)
            verify_files(folder, config["files"])  # refuse to publish a broken or foreign folder
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model"
            save_pretrained(folder_or_module, folder, repo_id=repo_id)
            config = read_config(folder)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch and branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        message = commit_message or f"Upload {config['family']} model with zoo"
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=branch, create_pr=create_pr,
                                 commit_message=message)
