"""`python -m onnx_attr.converters` prints the supported-ops table (docs/supported_ops.md)."""

from . import registry

print(registry.supported_ops_markdown(), end="")
