"""Evaluators: scoring tasks (retrieval, classification) and the eval set formats that read files into them.

Importing this package registers every module in it, so a new built-in format or task is one new
file here; one outside the package is a module named in a spec's `base.plugins` (docs/analysis.md).
"""

import importlib
import pkgutil

from oner_lab.evaluators.registry import TASKS, Task, register_task, task_of

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Task", "register_task", "task_of"]
