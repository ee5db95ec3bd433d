"""zoo: eleven research papers as Lightning model families with a checkpoint hub.

    import zoo
    zoo.list_models("code*")
    model = zoo.create_model("codet5-tiny")                 # random init
    model = zoo.from_pretrained("org/codet5-tiny")          # hub id, local folder or upstream id
    zoo.save_pretrained(model, "out/codet5-tiny")           # hub folder + generated card
"""

from __future__ import annotations

__version__ = "0.1.0"

from zoo.hub.pretrained import from_pretrained, push_to_hub, save_pretrained
from zoo.registry import create_model, list_models, model_info


def load_config(path: str, overrides: list[str] | dict | None = None):
    """Build the model, data and trainer of a CLI config file in Python (what `zoo fit -c path` would)."""
    from zoo.cli import load_config as _load_config

    return _load_config(path, overrides)


__all__ = ["from_pretrained", "save_pretrained", "push_to_hub", "list_models", "create_model", "model_info",
           "load_config", "__version__"]
