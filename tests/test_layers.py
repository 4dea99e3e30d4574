"""The package's layers import only downward: importing -> deeplift -> methods -> app
(docs/architecture.md, "Layout"). A module may import its own layer, any layer below it and the
shared top-level modules; never a layer above, not even inside a function. Every module lives in
a layer or is one of the shared ones, so a new module has to be placed."""

from __future__ import annotations

import ast
import importlib
import pathlib
import warnings

import pytest

import onnx_attr
from onnx_attr._moved import MOVED

ORDER = ["importing", "deeplift", "methods", "app"]
#: Top-level modules every layer may use; they import no layer themselves.
SHARED = {"errors", "fileio", "progress"}
#: The package's front: public names re-exported from every layer, the old module paths, and the import-time
#: setup of __init__ (onnx2torch imported without torchvision up front).
FACADE = {"__init__", "__main__", "_moved", "_lazy_torchvision"}
PACKAGE = pathlib.Path(onnx_attr.__file__).parent


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "onnx_attr" or len(parts) < 2:
        return None
    if parts[1] in MOVED:  # an old path names the module's layer through the alias
        parts = ["onnx_attr", *MOVED[parts[1]].split("."), *parts[2:]]
    return ORDER.index(parts[1]) if parts[1] in ORDER else None


def _imports(path: pathlib.Path):
    own = path.relative_to(PACKAGE.parent).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = own[:-1] if own[-1] != "__init__" else own[:-1]
                base = ".".join([*package[:len(package) - node.level + 1], *([node.module] if node.module else [])])
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)


def _module(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_every_module_has_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.stem not in SHARED | FACADE]
    assert not loose, f"place these modules in one of {ORDER} (or make them shared): {loose}"


def test_layers_import_only_downward():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        if module.split(".")[-1] in FACADE and module.count(".") == 1:
            continue
        own = _layer(module)
        shared = own is None
        for line, other in _imports(path):
            layer = _layer(other)
            if layer is not None and (shared or layer > own):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {other}")
    assert not wrong, "a module imports a layer above its own:\n" + "\n".join(wrong)


def test_the_direction_test_sees_an_upward_import(tmp_path):
    """The walker itself: a relative and an absolute upward import are both found."""
    fake = tmp_path / "onnx_attr" / "importing" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..app import cli\nfrom onnx_attr.deeplift.engine import DeepLiftEngine\n")
    global PACKAGE
    real, PACKAGE = PACKAGE, tmp_path / "onnx_attr"
    try:
        found = [_layer(m) for _, m in _imports(fake)]
    finally:
        PACKAGE = real
    assert ORDER.index("app") in found and ORDER.index("deeplift") in found


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_still_import(old):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        aliased = importlib.import_module(f"onnx_attr.{old}")
    assert aliased is importlib.import_module(f"onnx_attr.{MOVED[old]}")
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in seen)


def test_old_submodule_path_is_the_same_module():
    from onnx_attr.deeplift.rules.base import RULES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from onnx_attr.rules.base import RULES as old
    assert old is RULES
    assert callable(onnx_attr.verify) and callable(onnx_attr.smooth)  # not bound over by a submodule


def test_public_verify_stays_the_function_after_a_model_verifies():
    """In the flat layout, importing the `verify` module bound it over the function `onnx_attr.verify`."""
    import subprocess
    import sys

    sample = next(iter(sorted((PACKAGE.parent / "samples").glob("*.onnx"))))
    code = ("import onnx_attr, sys; m = onnx_attr.load(sys.argv[1]); m.verify(); "
            "assert callable(onnx_attr.verify) and callable(onnx_attr.smooth), type(onnx_attr.verify)")
    subprocess.run([sys.executable, "-c", code, str(sample)], check=True, timeout=300)
