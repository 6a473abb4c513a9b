"""A package's public names, imported when first used (PEP 562) instead of when the package is imported.

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"coa_lora.lora.trainer": ["train", "load_trained"], ...})

Why: ``from coa_lora import load_packed`` on a device should not import the search (BoTorch, gpytorch), the trainer
and pandas only because the package names them: that cost ~90 MiB of resident memory and most of the import time of
a deployed model (bench/deploy_memory.py, ``limits``). ``from coa_lora import Workbench`` still works unchanged.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_exports(package: str, where: Mapping[str, Sequence[str]]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``: each name of ``where[module]`` is imported from ``module``
    on first access and then kept as an ordinary attribute of the package."""
    index = {name: module for module, names in where.items() for name in names}

    def __getattr__(name: str):
        module = index.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(index))

    return __getattr__, __dir__, sorted(index)
