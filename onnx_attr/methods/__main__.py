"""`python -m onnx_attr.methods`: the README's method table, from the registry."""

from onnx_attr.methods.registry import methods_markdown

print(methods_markdown(), end="")
