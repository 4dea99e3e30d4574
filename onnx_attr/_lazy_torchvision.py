"""onnx2torch imports torchvision at load time, for two converters (NonMaxSuppression, RoiAlign)
that most models never use, and torchvision in turn imports torch._dynamo: seconds on every start
of the CLI or a worker (more than half of a bare `import torch` on a loaded 2-core machine).

While onnx2torch itself is imported, `torchvision` and `torchvision.ops` are stand-ins whose
names resolve to the real ones on first use; afterwards the stand-ins leave `sys.modules`, so
anyone's own `import torchvision` gets the real package. Nothing changes when torchvision was
imported before onnx2torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Any, Optional

_STANDING_IN = ("torchvision", "torchvision.ops")


class _StandIn(types.ModuleType):
    """A module name whose attributes are the real module's, read when used."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_importing"] = True  # while onnx2torch imports: hand out deferred names

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if self.__dict__["_importing"]:
            return _deferred(self.__name__, attr)
        return getattr(importlib.import_module(self.__name__), attr)


def _deferred(module: str, attr: str):
    """A function standing for `module.attr`, imported on its first call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__name__ = call.__qualname__ = attr
    return call


class _Loader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module) -> None:
        if any(name in sys.modules for name in _STANDING_IN):  # torchvision came first: nothing to defer
            self.real.exec_module(module)
            return
        stand_ins = {name: _StandIn(name) for name in _STANDING_IN}
        stand_ins["torchvision"].__dict__["ops"] = stand_ins["torchvision.ops"]
        sys.modules.update(stand_ins)
        try:
            self.real.exec_module(module)
        finally:
            for name, stand_in in stand_ins.items():
                stand_in.__dict__["_importing"] = False
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first `import onnx2torch`, then steps aside."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        if name != "onnx2torch":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or "torchvision" in sys.modules:
            return spec
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Defer torchvision for the first import of onnx2torch (once; not when it is imported already)."""
    if "onnx2torch" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
