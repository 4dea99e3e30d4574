"""`python -m onnx_attr.importing.converters` prints the supported-ops table (docs/supported_ops.md)."""

from onnx_attr.importing.converters import registry

print(registry.supported_ops_markdown(), end="")
