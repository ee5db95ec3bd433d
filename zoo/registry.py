"""The model registry: plain data, queried by small functions.

    >>> import zoo
    >>> zoo.list_models("codet5*")                     # doctest: +SKIP
    ['codet5-base', 'codet5-small', 'codet5-tiny']
    >>> model = zoo.create_model("codet5-tiny", lr=3e-4)  # doctest: +SKIP

A family registers itself in ``zoo/models/<family>/__init__.py``::

    register(ModelEntry(name="codet5-tiny", family="codet5", module_class=CodeT5Module, ...))

The registry imports ``zoo.models`` (every family) itself on the first lookup, so a model can
never be "not registered because not imported".
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from zoo.errors import ConfigError, UnknownModelError, UnregisteredClassError


@dataclass(frozen=True)
class Paper:
    """Where a family comes from."""

    title: str
    arxiv: str
    bibtex: str
    authors: str = ""
    venue: str = ""
    code_url: str = ""

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


@dataclass(frozen=True)
class UpstreamCheckpoint:
    """A published checkpoint that zoo converts on load, pinned to one revision.

    ``converter(folder)`` receives a local folder holding ``files`` exactly as upstream
    publishes them and returns a ready ``ZooModule`` (weights loaded, tokenizer attached).
    """

    repo_id: str
    revision: str
    model: str
    converter: Callable[..., Any]
    files: tuple[str, ...] = ("config.json", "pytorch_model.bin")
    optional_files: tuple[str, ...] = ()
    license: str = ""
    description: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: a family's variant with its default configuration and provenance."""

    name: str
    family: str
    module_class: type
    config: Mapping[str, Any]
    paper: Paper
    license: str
    datamodule_class: type | None = None
    variant: str = "default"
    tags: tuple[str, ...] = ()
    description: str = ""
    default: bool = False
    config_file: str | None = None
    upstream: tuple[UpstreamCheckpoint, ...] = ()

    @property
    def class_path(self) -> str:
        return class_path(self.module_class)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "variant": self.variant,
            "class_path": self.class_path,
            "datamodule": class_path(self.datamodule_class) if self.datamodule_class else None,
            "config": dict(self.config),
            "paper": {"title": self.paper.title, "arxiv": self.paper.arxiv, "url": self.paper.url},
            "license": self.license,
            "tags": list(self.tags),
            "description": self.description,
            "config_file": self.config_file,
            "upstream": [{"repo_id": u.repo_id, "revision": u.revision, "model": u.model} for u in self.upstream],
        }


@dataclass
class _Registry:
    models: dict[str, ModelEntry] = field(default_factory=dict)
    datamodules: dict[str, type] = field(default_factory=dict)
    upstream: dict[str, UpstreamCheckpoint] = field(default_factory=dict)
    loaded: bool = False


_REGISTRY = _Registry()
_LOAD_LOCK = threading.RLock()


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model entry (and its upstream checkpoints). Names are unique."""
    if entry.name in _REGISTRY.models and _REGISTRY.models[entry.name] != entry:
        raise ConfigError(f"model name {entry.name!r} is registered twice; pick another variant name")
    _REGISTRY.models[entry.name] = entry
    for ckpt in entry.upstream:
        _REGISTRY.upstream[ckpt.repo_id] = ckpt
    if entry.datamodule_class is not None:
        _REGISTRY.datamodules.setdefault(entry.family, entry.datamodule_class)
    return entry


def register_datamodule(name: str, cls: type) -> type:
    """Give a DataModule a short name usable as ``--data=name``."""
    _REGISTRY.datamodules[name] = cls
    return cls


def _ensure_loaded() -> None:
    if _REGISTRY.loaded:
        return
    with _LOAD_LOCK:
        if not _REGISTRY.loaded:
            _REGISTRY.loaded = True
            try:
                importlib.import_module("zoo.models")
            except BaseException:
                _REGISTRY.loaded = False
                raise


def _suggest(name: str, candidates) -> list[str]:
    return difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.5)


def _unknown(name: str, candidates, what: str = "model") -> UnknownModelError:
    suggestions = _suggest(name, candidates)
    hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    return UnknownModelError(
        f"unknown {what} {name!r}.{hint} Run `zoo list` (or zoo.list_models()) to see every registered name.",
        suggestions,
    )


def list_models(pattern: str = "*", family: str | None = None, pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _ensure_loaded()
    names = []
    for name, entry in _REGISTRY.models.items():
        if family and entry.family != family:
            continue
        if pretrained and not entry.upstream:
            continue
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(entry.family, pattern):
            names.append(name)
    return sorted(names)


def list_families() -> list[str]:
    _ensure_loaded()
    return sorted({e.family for e in _REGISTRY.models.values()})


def list_upstream(family: str | None = None) -> list[UpstreamCheckpoint]:
    _ensure_loaded()
    out = [u for u in _REGISTRY.upstream.values() if family is None or model_info(u.model).family == family]
    return sorted(out, key=lambda u: u.repo_id)


def is_model(name: str) -> bool:
    _ensure_loaded()
    return name in _REGISTRY.models or any(e.family == name for e in _REGISTRY.models.values())


def model_info(name: str) -> ModelEntry:
    """The entry of a model name, or of a family name (its default variant)."""
    _ensure_loaded()
    if name in _REGISTRY.models:
        return _REGISTRY.models[name]
    family = [e for e in _REGISTRY.models.values() if e.family == name]
    if family:
        defaults = [e for e in family if e.default]
        return (defaults or sorted(family, key=lambda e: e.name))[0]
    if name in _REGISTRY.upstream:
        return _REGISTRY.models[_REGISTRY.upstream[name].model]
    candidates = set(_REGISTRY.models) | {e.family for e in _REGISTRY.models.values()}
    raise _unknown(name, candidates)


def create_model(name: str, **overrides: Any):
    """A randomly initialised model of a registered name, with init-arg overrides."""
    entry = model_info(name)
    module_class = entry.module_class
    accepted = getattr(module_class, "init_arg_names", lambda: None)()
    if accepted is not None:
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise ConfigError(
                f"{entry.name}: unknown init argument(s) {unknown}; "
                f"{module_class.__name__} accepts {sorted(accepted)}"
            )
    return module_class(**{**dict(entry.config), **overrides})


def find_upstream(repo_id: str) -> UpstreamCheckpoint | None:
    _ensure_loaded()
    return _REGISTRY.upstream.get(repo_id)


def get_datamodule(name: str) -> type:
    _ensure_loaded()
    if name in _REGISTRY.datamodules:
        return _REGISTRY.datamodules[name]
    raise _unknown(name, _REGISTRY.datamodules, what="datamodule")


def datamodule_names() -> dict[str, type]:
    _ensure_loaded()
    return dict(_REGISTRY.datamodules)


def registered_classes() -> dict[str, type]:
    """The allow-list: the only classes a downloaded config may name."""
    _ensure_loaded()
    classes = {e.class_path: e.module_class for e in _REGISTRY.models.values()}
    classes.update({class_path(c): c for c in _REGISTRY.datamodules.values()})
    # the same classes under the names a family re-exports them by (zoo.models.codet5.CodeT5Module); only
    # modules already imported are read, nothing is imported on a config's say-so
    allowed = set(classes.values())
    for name, module in list(sys.modules.items()):
        if name.startswith("zoo.models.") and module is not None:
            for attr, value in list(vars(module).items()):
                if isinstance(value, type) and value in allowed:
                    classes.setdefault(f"{name}.{attr}", value)
    return classes


def resolve_class(path: str) -> type:
    """The registered class named by a dotted path; anything else is refused."""
    classes = registered_classes()
    if path in classes:
        return classes[path]
    raise UnregisteredClassError(
        f"config names class {path!r}, which is not a registered zoo class; refusing to import it. "
        "Only classes of registered families are instantiated from a downloaded config "
        f"(known: {', '.join(sorted(classes)) or 'none'})."
    )


def family_of_class(cls: type) -> ModelEntry:
    _ensure_loaded()
    for entry in _REGISTRY.models.values():
        if entry.module_class is cls or issubclass(cls, entry.module_class):
            return model_info(entry.family)
    raise UnregisteredClassError(f"{class_path(cls)} is not the module class of any registered family")
