"""Every model family. The registry imports this package on its first lookup."""

import importlib

FAMILIES = ("codet5", "dnabert2", "dupmae", "xar")

for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")
