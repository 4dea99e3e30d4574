"""Small helpers shared by the converter families."""

from __future__ import annotations

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
