"""Automatic capture of typed, JSON-serialisable init args (what makes every checkpoint rebuildable)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import pathlib
from typing import Any

from zoo.errors import ConfigError


def to_jsonable(value: Any, where: str) -> Any:
    """Numbers, strings, lists, dicts and dataclasses; anything else is refused with a clear error."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(
        f"init argument {where} is a {type(value).__name__}, which cannot be saved in a config; "
        "pass numbers, strings, lists, dicts or small dataclasses (never an nn.Module or tensor)"
    )


class CapturesInitArgs:
    """Mixin: after the outermost ``__init__`` returns, ``self._init_args`` holds its bound arguments.

    Subclasses must annotate every ``__init__`` parameter: untyped arguments would let the command
    line accept anything (``hidden=abc`` silently became a string).
    """

    _init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_captures", False):
            return
        signature = inspect.signature(init)
        untyped = [
            p.name
            for p in list(signature.parameters.values())[1:]
            if p.annotation is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if untyped:
            raise TypeError(f"{cls.__qualname__}.__init__ must annotate every argument; untyped: {untyped}")

        @functools.wraps(init)
        def wrapped(self, *args, **kw):
            init(self, *args, **kw)
            if type(self).__init__ is wrapped:  # only the outermost __init__ records
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                captured = {}
                for name, value in list(bound.arguments.items())[1:]:
                    kind = signature.parameters[name].kind
                    if kind is inspect.Parameter.VAR_KEYWORD:
                        captured.update({k: to_jsonable(v, k) for k, v in value.items()})
                    elif kind is not inspect.Parameter.VAR_POSITIONAL:
                        captured[name] = to_jsonable(value, name)
                json.dumps(captured)
                object.__setattr__(self, "_init_args", captured)
                self._after_init_args_captured(captured)

        wrapped._captures = True
        cls.__init__ = wrapped

    def _after_init_args_captured(self, init_args: dict[str, Any]) -> None:
        pass

    @property
    def init_args(self) -> dict[str, Any]:
        return json.loads(json.dumps(getattr(self, "_init_args", {})))

    @classmethod
    def init_arg_names(cls) -> list[str]:
        names = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            params = list(inspect.signature(init).parameters.values())[1:]
            names.extend(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names
