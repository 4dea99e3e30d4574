"""Which kind each ONNX op is, for DeepLift (see docs/architecture.md, "four kinds").

linear: the multiplier is the plain gradient; unary: elementwise nonlinear, rescale rule;
bilinear: a product of two variable operands, Shapley product rule; composite: decomposed
into the others; structural: carries no attribution (shapes, masks, indices). Whether a
Mul/MatMul/... is bilinear depends on the graph: with one constant operand it is linear.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx

LINEAR = frozenset({
    "Add", "Sub", "Neg", "Sum", "Mean", "Identity", "Dropout", "Cast", "CastLike",
    "Conv", "ConvTranspose", "BatchNormalization", "AveragePool", "GlobalAveragePool",
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth",
    "ReduceSum", "ReduceMean", "CumSum", "Resize", "Upsample", "Trilu", "Compress", "ScatterND",
    "ScatterElements", "Scatter", "TensorScatter", "Where", "ReverseSequence", "CenterCropPad", "DFT", "STFT",
    "AffineGrid", "Col2Im", "MaxUnpool",
})
UNARY = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
    "Tanh", "Softplus", "Softsign", "Exp", "Log", "Erf", "Sqrt", "Reciprocal", "Pow", "Abs", "Clip",
    "HardSwish", "Gelu", "Mish", "Shrink", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
    "Asinh", "Acosh", "Atanh", "Swish",
})
BILINEAR = frozenset({"Mul", "Div", "MatMul", "Gemm", "Einsum"})
COMPOSITE = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "RMSNormalization",
    "MaxPool", "GlobalMaxPool", "Max", "Min", "ReduceMax", "ReduceMin", "ReduceLogSumExp", "ReduceL1",
    "ReduceL2", "ReduceSumSquare", "ReduceProd", "LRN", "LSTM", "GRU", "RNN", "MeanVarianceNormalization",
    "Attention", "SwiGLU",
})
#: Ops whose outputs carry no attribution: shapes, comparisons, indices, rounding, random.
STRUCTURAL = frozenset({
    "Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "NonZero", "ArgMax", "ArgMin",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor", "IsNaN", "IsInf",
    "Sign", "Floor", "Ceil", "Round", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitCast",
    "OneHot", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Bernoulli", "Multinomial",
})


#: ai.onnx.ml ops as imported: ZipMap is the probability tensor itself, ArrayFeatureExtractor a gather.
ML_LINEAR = frozenset({"ZipMap", "ArrayFeatureExtractor"})


#: onnxruntime's com.microsoft fusions, by what they expand into (converters/microsoft.py)
MICROSOFT_KINDS = {"Gelu": "unary", "FastGelu": "unary", "QuickGelu": "unary", "BiasGelu": "composite",
                   "FusedConv": "composite", "SkipLayerNormalization": "composite", "Attention": "composite",
                   "MultiHeadAttention": "composite", "DynamicQuantizeLSTM": "composite"}


#: Scatter reductions that make the op nonlinear in its data and updates (no DeepLift rule)
_NONLINEAR_REDUCTIONS = frozenset({"mul", "max", "min"})


def domain_op_kind(domain: str, op_type: str, variable: Sequence[bool], attrs: Mapping | None = None) -> str:
    """`op_kind` for any domain: ai.onnx ops by the tables above, a few ai.onnx.ml ones, else unknown."""
    if domain in ("", "ai.onnx"):
        return op_kind(op_type, variable, attrs)
    if domain == "ai.onnx.ml" and op_type in ML_LINEAR:
        return "linear"
    if domain == "onnx_attr.smooth" and op_type == "LogSumExpPool":  # onnx_attr.smooth's substitute
        return "composite"
    if domain == "onnx_attr.quantized" and op_type == "QuantizedBlock":  # rules/quantized.fuse_quantized_blocks
        return "composite"
    if domain == "com.microsoft":  # converters/microsoft.py: each expands into the ONNX ops it fuses
        return op_kind("MatMul", variable) if op_type == "FusedMatMul" else MICROSOFT_KINDS.get(op_type, "unknown")
    return "unknown"


def op_kind(op_type: str, variable: Sequence[bool], attrs: Mapping | None = None) -> str:
    """Kind of an ai.onnx op given which of its inputs depend on the model's inputs (and, where
    the kind depends on them, its attributes)."""
    n_var = sum(variable)
    if op_type in ("ScatterElements", "ScatterND") and (attrs or {}).get("reduction") in _NONLINEAR_REDUCTIONS:
        return "unknown"
    if op_type == "BatchNormalization" and (attrs or {}).get("training_mode"):  # batch statistics
        return "unknown"
    if op_type == "Div":  # a / b is linear in a; a varying divisor makes it a quotient
        return "bilinear" if len(variable) > 1 and variable[1] else "linear"
    if op_type == "GridSample":  # linear in X at a fixed grid; a varying grid moves the samples
        return "unknown" if len(variable) > 1 and variable[1] else "linear"
    if op_type == "RotaryEmbedding":  # a rotation of X by angles from the cos/sin caches
        return "unknown" if any(variable[1:3]) else "linear"
    if op_type == "OneHot":  # a selection of `values` by the indices: linear in values, no gradient to indices
        return "linear" if len(variable) > 2 and variable[2] else "structural"
    if op_type in ("Conv", "ConvTranspose"):  # linear in x and in the weight; a product when both vary
        return "bilinear" if len(variable) > 1 and variable[0] and variable[1] else "linear"
    if op_type in BILINEAR:
        return "bilinear" if n_var >= 2 else "linear"
    for kind, ops in (("linear", LINEAR), ("unary", UNARY), ("composite", COMPOSITE), ("structural", STRUCTURAL)):
        if op_type in ops:
            return kind
    return "unknown"


def node_kinds(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """Each node with its kind, tracking which tensors vary with the (floating) graph inputs."""
    graph = model.graph
    variable = {i.name for i in graph.input}
    out = []
    for node in graph.node:
        flags = [name in variable for name in node.input]
        attrs = {a.name: _decoded(onnx.helper.get_attribute_value(a)) for a in node.attribute}
        kind = domain_op_kind(node.domain, node.op_type, flags, attrs)
        if any(flags) and kind != "structural":
            variable.update(node.output)
        out.append((node, kind))
    return out


def _decoded(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def nonlinear_nodes(model: onnx.ModelProto) -> list[dict]:
    """The nodes DeepLift must treat specially (everything but linear and structural ones)."""
    return [
        {"node": node.name or f"{node.op_type}#{i}", "op": node.op_type, "kind": kind}
        for i, (node, kind) in enumerate(node_kinds(model))
        if kind not in ("linear", "structural")
    ]
