"""Training data sources, one unit per `data.source.kind`. Importing this package registers every
module in it; a source outside the package is a module named in `base.plugins` (docs/data.md)."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
