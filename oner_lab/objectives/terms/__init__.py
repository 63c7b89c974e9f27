"""One module per objective term; importing this package registers every module in it,
so a new term is one new file here plus its name and weight in a spec."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
