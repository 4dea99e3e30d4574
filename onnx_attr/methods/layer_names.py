"""The layers of a layer method as the user named them, and its results packed the same way.

Captum names modules; a module with several outputs gives a tuple of attributions, and a list of
modules a list of results, each a tensor or such a tuple. Here a layer is an ONNX tensor name, so
a module's several outputs are a tuple (or list) of names inside the list of layers:
`["relu_a", ("split_0", "split_1")]` gives `[A, (S0, S1)]`. The methods work on the flat names.
"""

from __future__ import annotations

from typing import Any, Sequence

from onnx_attr.errors import InputError


class LayerNames:
    """`layer` as given: one name, a list or tuple of names, and inside a list or tuple, groups of
    names (one module's outputs). `flat` are the names in order."""

    def __init__(self, layer: Any):
        self.given = layer
        self.groups: list[Any] = []  # per item of the list: a name, or a tuple of names
        if isinstance(layer, str):
            self.flat = [layer]
            return
        if not isinstance(layer, (list, tuple)) or not layer:
            _refuse(layer)
        self.flat = []
        for item in layer:
            if isinstance(item, str):
                self.flat.append(item)
                self.groups.append(item)
            elif isinstance(item, (list, tuple)) and item and all(isinstance(n, str) for n in item):
                self.flat.extend(item)
                self.groups.append(tuple(item))
            else:
                _refuse(layer)

    @property
    def nested(self) -> bool:
        return any(isinstance(g, tuple) for g in self.groups)

    def pack(self, items: Sequence[Any]) -> Any:
        """One result per flat name -> the structure `layer` was given in: one result for a name,
        a list (or tuple) for a list (or tuple), a tuple for each group inside it."""
        if isinstance(self.given, str):
            return items[0]
        out, it = [], iter(items)
        for group in self.groups:
            out.append(next(it) if isinstance(group, str) else tuple(next(it) for _ in group))
        return out if isinstance(self.given, list) else tuple(out)


def _refuse(layer: Any):
    raise InputError(f"layer {layer!r}: give an ONNX tensor name, or a list of them (a tuple of names inside the "
                     "list for one module's several outputs); `onnx-attr inspect --json` lists them")
