"""Small helpers shared by the converter families."""

from __future__ import annotations

from onnx2torch.node_converters import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult
from torch import nn


def result(node: OnnxNode, module: nn.Module, inputs: tuple[str, ...] | None = None) -> OperationConverterResult:
    """A converter's result: the module, fed the node's inputs (or `inputs`), giving its outputs."""
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=node.input_values if inputs is None else inputs,
                                 outputs=node.output_values),
    )


def onnx2torch_result(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:
    """onnx2torch's converter for the node's op at `version`, for the cases it handles well
    (constant weights or bounds) inside a converter of ours that covers the rest."""
    return get_converter(operation_type=node.operation_type, version=version, domain="")(node, graph)


def text_attribute(node: OnnxNode, name: str, default: str) -> str:
    """A string attribute (onnx2torch may hand it over as bytes)."""
    value = node.attributes.get(name, default)
    return value.decode() if isinstance(value, bytes) else value
