"""Attribution methods, one file per family, sharing Captum's `attribute()` contract and the base
in `base.py`; `registry.py` lists them. Classes are imported on first use (see `registry`), so
reading the registry (the CLI's `--help`) does not import torch."""

from __future__ import annotations

import importlib
from typing import Any

from onnx_attr.methods.registry import REGISTRY

#: Public class name -> "module:Class", from the registry plus the wrappers it does not list.
_CLASSES = {**{e.class_name: e.path for e in REGISTRY.values()}, "NoiseTunnel": "noise_tunnel:NoiseTunnel"}


def __getattr__(name: str) -> Any:
    path = _CLASSES.get(name)
    if path is None:
        raise AttributeError(f"module 'onnx_attr.methods' has no attribute {name!r}")
    module, _, cls = path.rpartition(":")
    value = getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), cls)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CLASSES))


__all__ = sorted(_CLASSES)
