"""`python -m onnx_attr.methods`: the README's method table, from the registry."""

from .registry import methods_markdown

print(methods_markdown(), end="")
