"""`signature_names` is read once per class's forward (the rewrite asks for every node), and a
forward set on one instance is still read from that instance."""

from __future__ import annotations

import torch

from onnx_attr.deeplift.ops import signature_names


class _Two(torch.nn.Module):
    def forward(self, x, y=None, *rest, scale=1.0):
        return x


def test_positional_names_per_class_and_per_instance():
    first, second = _Two(), _Two()
    assert signature_names(first) == signature_names(second) == ["x", "y"]
    names = signature_names(first)
    names.append("changed")  # a copy: the cached names stay
    assert signature_names(second) == ["x", "y"]
    second.forward = lambda a, b, c: a
    assert signature_names(second) == ["a", "b", "c"] and signature_names(first) == ["x", "y"]
    assert signature_names(torch.nn.Conv2d(1, 1, 1)) == ["input"]
