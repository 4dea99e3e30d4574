"""Which kind each ONNX op is, for DeepLift (see docs/architecture.md, "Op kinds").

linear: the multiplier is the plain gradient; unary: elementwise nonlinear, rescale rule;
bilinear: a product of two variable operands, Shapley product rule; composite: decomposed
into the others; structural: carries no attribution (shapes, masks, indices). Whether a
Mul/MatMul/... is bilinear depends on the graph: with one constant operand it is linear.

Only linear and structural ops are listed here. Every other kind is declared once, by the op's
rule (`rules.RULES[op].kind`); an importable op with no rule is in `REFUSED`, with the reason
DeepLift gives when it meets one.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx

from onnx_attr.deeplift.rules import RULES

LINEAR = frozenset({
    "Add", "Sub", "Neg", "Sum", "Mean", "Identity", "Dropout", "Cast", "CastLike",
    "Conv", "ConvTranspose", "BatchNormalization", "AveragePool", "GlobalAveragePool",
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "DepthToSpace", "SpaceToDepth",
    "ReduceSum", "ReduceMean", "CumSum", "Resize", "Upsample", "Trilu", "Compress", "ScatterND",
    "ScatterElements", "Scatter", "TensorScatter", "Where", "ReverseSequence", "CenterCropPad", "DFT", "STFT",
    "AffineGrid", "Col2Im", "MaxUnpool",
    # sequences are lists of tensors: gathered, concatenated, cut (converters/sequence.py)
    "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt", "ConcatFromSequence", "SplitToSequence",
    "Optional", "OptionalGetElement",
})
#: Ops whose outputs carry no attribution: shapes, comparisons, indices, rounding, random.
STRUCTURAL = frozenset({
    "Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "NonZero", "ArgMax", "ArgMin",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor", "IsNaN", "IsInf",
    "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitCast",
    "OneHot", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Bernoulli", "Multinomial", "SequenceEmpty", "SequenceLength", "OptionalHasElement",
    "HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix",  # made from sizes and constants
})


#: ai.onnx.ml ops as imported: ZipMap is the probability tensor itself, ArrayFeatureExtractor a gather.
ML_LINEAR = frozenset({"ZipMap", "ArrayFeatureExtractor"})
#: ai.onnx.ml ops whose outputs no gradient follows: they select constants by a category
ML_STRUCTURAL = frozenset({"OneHotEncoder", "LabelEncoder"})
#: ai.onnx.ml tree ensembles: Shapley values of their features (rules/trees.py)
TREE_ENSEMBLES = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble"})
#: ai.onnx.ml ops imported as expansions into ai.onnx ops (converters/ml.py), by what they expand into: their
#: steps get the rules
ML_EXPANDED = {"LinearClassifier": "composite", "LinearRegressor": "linear", "Scaler": "linear",
               "Normalizer": "composite", "Imputer": "unary", "SVMClassifier": "composite",
               "SVMRegressor": "composite"}


#: onnxruntime's com.microsoft fusions, by what they expand into (converters/microsoft.py)
MICROSOFT_KINDS = {"Gelu": "unary", "FastGelu": "unary", "QuickGelu": "unary", "BiasGelu": "composite",
                   "FusedConv": "composite", "SkipLayerNormalization": "composite", "Attention": "composite",
                   "MultiHeadAttention": "composite", "DynamicQuantizeLSTM": "composite", "FusedGemm": "composite",
                   "SkipSimplifiedLayerNormalization": "composite", "MatMulIntegerToFloat": "composite",
                   "DynamicQuantizeMatMul": "composite", "QAttention": "composite", "MatMulNBits": "composite"}
#: onnxruntime's own ai.onnx ops imported as expansions into ONNX ops (converters/microsoft.py)
ONNX_EXPANDED = {"SimplifiedLayerNormalization": "composite"}


#: Steps of our own expansions (converters/svm.py) with no rule: refused by name like the ops below
EXPANSION_STEPS = frozenset({"SVMProbabilityCoupling"})

#: Importable ops with no DeepLift rule, and why: the rewrite refuses them by name with this reason.
#: the integer ops of onnxruntime's QOperator quantization, through which no gradient or multiplier flows
QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                           "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearConcat",
                           "QGemm", "QLinearSoftmax"})

REFUSED = {
    "If": "its branch is chosen per call (the condition is resolved when it does not follow the attributed "
          "inputs; see specialize.py)",
    "Loop": "its trip count is unrolled per call when it does not follow the attributed inputs (specialize.py)",
    "Scan": "a top-level Scan (opset 9 on) is unrolled per call (specialize.py); a Scan-8, with a length per "
            "example, is not",
    "SVMProbabilityCoupling": "libsvm's coupling of pairwise class probabilities is an iterative solve (for two "
                              "classes the probability is a sigmoid of the decision value, stripped as the final "
                              "activation)",
    "Hardmax": "a step function of its input: no multiplier makes it complete",
    "Mod": "a sawtooth of its inputs: no multiplier makes it complete",
    "CumProd": "a running product of many varying terms",
    "Det": "a product of many varying terms",
    "DeformConv": "its sampling offsets are products with the input",
    "RoiAlign": "no rule yet (linear in X at fixed boxes in avg mode, a max in max mode)",
    "NonMaxSuppression": "it returns indices chosen by comparing scores",
    "Unique": "its output is chosen by comparing values",
    "QuantizeLinear": "static quantization rounds, and only a QuantizeLinear read by DequantizeLinears alone "
                      "(a fake-quant pair, quant_fusion.py) or by QOperator ops (qoperator.py) has a rule: "
                      "attribute the float model",
    "DequantizeLinear": "static quantization (see QuantizeLinear)",
    "DynamicQuantizeLinear": "it is attributed only inside a dynamically quantized block (rules/quantized.py)",
    "MatMulInteger": "integer arithmetic, attributed only inside a dynamically quantized block",
    "ConvInteger": "integer arithmetic, attributed only inside a dynamically quantized block",
    **{op: "static quantization (integer arithmetic), explained where its integers can be carried as floats "
           "(qoperator.py: every integer tensor read by QOperator ops, moves, MaxPool or DequantizeLinear): attribute "
           "the float model, or explain this one with a perturbation method (FeatureAblation, KernelShap, "
           "ShapleyValueSampling, Lime; CLI --method featureablation, kernelshap)"
       for op in QOPERATOR_OPS},
    "ImageDecoder": "it decodes bytes, which carry no gradient",
    "Binarizer": "a step function of its input",
    "NegativeLogLikelihoodLoss": "a training loss: attribute the model's outputs instead",
    "SoftmaxCrossEntropyLoss": "a training loss: attribute the model's outputs instead",
    "Adagrad": "a training optimizer step", "Adam": "a training optimizer step", "Momentum": "a training optimizer step",
    "CausalConvWithState": "no rule yet", "LinearAttention": "no rule yet",
    # linear in the common case, refused in the configuration `op_kind` calls unknown
    "RotaryEmbedding": "with cos/sin caches that vary with the attributed inputs (a rotation at fixed caches)",
    "ScatterND": "with a mul, max or min reduction",
    "BatchNormalization": "in training mode or with statistics computed from the attributed inputs (a written-out "
                          "LayerNorm that was not recognised)",
}


def refusal(op_type: str, kind: str) -> str:
    """The sentence the DeepLift rewrite gives for a node it has no rule for."""
    why = REFUSED.get(op_type)
    return f"no DeepLift rule for {op_type}: {why}" if why else f"no DeepLift rule for {kind} op {op_type}"


#: Scatter reductions that make the op nonlinear in its data and updates (no DeepLift rule)
_NONLINEAR_REDUCTIONS = frozenset({"mul", "max", "min"})


def domain_op_kind(domain: str, op_type: str, variable: Sequence[bool], attrs: Mapping | None = None) -> str:
    """`op_kind` for any domain: ai.onnx ops by the tables above, a few ai.onnx.ml ones, else unknown."""
    if domain in ("", "ai.onnx"):
        return ONNX_EXPANDED.get(op_type) or op_kind(op_type, variable, attrs)
    if domain == "ai.onnx.ml" and op_type in ML_LINEAR:
        return "linear"
    if domain == "ai.onnx.ml" and op_type in ML_STRUCTURAL:
        return "structural"
    if domain == "ai.onnx.ml" and op_type in ML_EXPANDED:
        return ML_EXPANDED[op_type]
    if domain == "ai.onnx.ml" and op_type in TREE_ENSEMBLES:
        return RULES[op_type].kind  # rules/trees.py
    if domain in ("onnx_attr.smooth", "onnx_attr.quantized", "onnx_attr.fused", "onnx_attr.control") and op_type in RULES:  # our own
        return RULES[op_type].kind  # nodes: smooth's LogSumExpPool, QuantizedBlock, unary_fusion's SelfGated
    if domain == "com.microsoft":  # converters/microsoft.py: each expands into the ONNX ops it fuses
        return op_kind("MatMul", variable) if op_type == "FusedMatMul" else MICROSOFT_KINDS.get(op_type, "unknown")
    return "unknown"


def op_kind(op_type: str, variable: Sequence[bool], attrs: Mapping | None = None) -> str:
    """Kind of an ai.onnx op given which of its inputs depend on the model's inputs (and, where
    the kind depends on them, its attributes)."""
    n_var = sum(variable)
    if op_type in ("ScatterElements", "ScatterND") and (attrs or {}).get("reduction") in _NONLINEAR_REDUCTIONS:
        # a segment max or min (a graph network's global max pooling): the cross-max rule (rules/scatter.py)
        return RULES[op_type].kind if op_type in RULES and attrs.get("reduction") in ("max", "min") else "unknown"
    if op_type == "BatchNormalization" and ((attrs or {}).get("training_mode") or any(variable[3:5])):
        return "unknown"  # batch statistics, or statistics computed from the input: not linear
    if op_type == "Div":  # a / b is linear in a; a varying divisor makes it a quotient
        return "bilinear" if len(variable) > 1 and variable[1] else "linear"
    if op_type == "GridSample":  # linear in X at a fixed grid; a varying grid moves the samples (rules/sampling.py)
        return RULES["GridSample"].kind if len(variable) > 1 and variable[1] else "linear"
    if op_type == "RotaryEmbedding":  # a rotation of X by angles from the cos/sin caches
        return "unknown" if any(variable[1:3]) else "linear"
    if op_type == "OneHot":  # a selection of `values` by the indices: linear in values, no gradient to indices
        return "linear" if len(variable) > 2 and variable[2] else "structural"
    if op_type in ("Conv", "ConvTranspose"):  # linear in x and in the weight; a product when both vary
        return "bilinear" if len(variable) > 1 and variable[0] and variable[1] else "linear"
    if op_type in LINEAR:
        return "linear"
    if op_type in STRUCTURAL:
        return "structural"
    rule = RULES.get(op_type)
    if rule is None:
        return "unknown"
    if rule.kind == "bilinear":  # a product with one varying operand is a constant scale
        return "bilinear" if n_var >= 2 else "linear"
    return rule.kind


def node_kinds(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """Each node with its kind, tracking which tensors vary with the (floating) graph inputs."""
    graph = model.graph
    variable = {i.name for i in graph.input}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = []
    for node in graph.node:
        flags = [name in variable for name in node.input]
        attrs = {a.name: _decoded(onnx.helper.get_attribute_value(a)) for a in node.attribute}
        kind = domain_op_kind(node.domain, node.op_type, flags, attrs)
        if node.op_type in _QDQ and node.domain in ("", "ai.onnx", "com.microsoft"):  # onnxruntime's own too
            kind = _qdq_kind(node, flags, consumers)
        if node.op_type in QOPERATOR_OPS and any(flags) or kind == "unknown" and node.op_type in _QDQ and any(
                u.op_type in QOPERATOR_OPS for o in node.output for u in consumers.get(o, [])):
            kind = "quantized"  # QOperator's integer arithmetic, carried as floats (deeplift/qoperator.py)
        elif node.op_type in DYNAMIC_OPS and node.domain in ("", "ai.onnx"):
            # a dynamically quantized block (or product), explained as one node (rules/quantized.py); of
            # constants alone (DeBERTa's relative positions), a constant
            kind = "quantized" if any(flags) else "structural"
        elif node.op_type in CONTROL_FLOW and node.domain in ("", "ai.onnx") and kind == "unknown":
            kind = "control flow, resolved per call"  # specialize.py: refused only where it follows the attributed inputs
        if any(flags) and kind != "structural":
            variable.update(node.output)
        out.append((node, kind))
    return out


#: ops whose branch or trip count deeplift/specialize.py settles on each call's values before the rewrite
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_QDQ = ("QuantizeLinear", "DequantizeLinear")
#: onnxruntime's dynamic quantizer: a block DynamicQuantizeLinear → ConvInteger/MatMulInteger → Cast → Mul
DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"})


def _qdq_kind(node: onnx.NodeProto, flags: Sequence[bool], consumers: dict) -> str:
    """Static quantization as DeepLift sees it: a weight's DequantizeLinear is a constant, and an
    activation's QuantizeLinear → DequantizeLinear pair one elementwise staircase (quant_fusion.py);
    anything else keeps its refusal."""
    if not any(flags):
        return "structural"  # computed from initializers alone: a constant for DeepLift
    if node.op_type == "QuantizeLinear":
        users = consumers.get(node.output[0], [])
        paired = bool(users) and all(_dequantized(u, node.output[0], consumers) for u in users)
    else:
        paired = True  # its varying input is a quantized tensor: the pair was judged at its QuantizeLinear
    return "unary" if paired and not any(flags[1:]) else "unknown"


def _dequantized(user: onnx.NodeProto, tensor: str, consumers: dict) -> bool:
    """Whether a quantized tensor's reader is its DequantizeLinear, or moves its elements on to one
    (quant_fusion.hoist_dequantize: Transpose, Reshape, ... each read once)."""
    from onnx_attr.deeplift.quant_fusion import LAYOUT_OPS

    while user.op_type in LAYOUT_OPS and user.input and user.input[0] == tensor:
        users = consumers.get(user.output[0], [])
        if len(users) != 1:
            return False
        tensor, user = user.output[0], users[0]
    return user.op_type == "DequantizeLinear" and user.input[0] == tensor


def _decoded(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def nonlinear_nodes(model: onnx.ModelProto) -> list[dict]:
    """The nodes DeepLift must treat specially (everything but linear and structural ones)."""
    return [
        {"node": node.name or f"{node.op_type}#{i}", "op": node.op_type, "kind": kind}
        for i, (node, kind) in enumerate(node_kinds(model))
        if kind not in ("linear", "structural")
    ]
