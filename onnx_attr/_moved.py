"""Old module paths (`onnx_attr.engine`, `onnx_attr.rules.base`, ...) from before the package was
split into importing/, deeplift/, methods/ and app/: importing one gives the module at its new
place (the same object, so patches and isinstance checks agree) with a DeprecationWarning.

`onnx_attr.verify` and `onnx_attr.smooth` are not aliased: at the top level those names are the
public functions, and an imported submodule would be bound over them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: Old top-level module -> its place now.
MOVED = {
    **{name: f"importing.{name}" for name in ["read", "normalize", "final_activation", "convert", "loader", "budget",
                                               "specs", "model", "inputs", "input_files", "converters", "batch",
                                               "rows", "specialize"]},
    **{name: f"deeplift.{name}" for name in ["opkinds", "rewrite", "rules", "engine", "reference_cache", "layers",
                                              "targets", "target_grad"]},
    "metrics": "methods.metrics",
    **{name: f"app.{name}" for name in ["cli", "attribute_job", "dataset_job", "ray_engine", "visualize", "names",
                                         "manifest", "export", "readers", "report_html", "report_page", "preprocess",
                                         "text_inputs", "target_forms"]},
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != "onnx_attr" or parts[1] not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        parts = spec.name.split(".")
        new = ".".join(["onnx_attr", MOVED[parts[1]], *parts[2:]])
        warnings.warn(f"{spec.name} moved to {new}; import it from there (or the public name from onnx_attr)",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        """The module ran where it lives now."""


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before the path finder, which would load a second copy
