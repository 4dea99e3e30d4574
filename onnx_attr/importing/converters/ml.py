"""The ai.onnx.ml ops that scikit-learn's neural models export around their tensors.

ZipMap turns a [N, C] probability tensor into a sequence of {class: probability} maps, a value
PyTorch has no type for; it is imported as the tensor itself, columns in the order of its class
labels (which is the order of the maps' keys), and `verify` compares it so.
"""

from __future__ import annotations

import torch
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register


class ZipMapAsTensor(nn.Module):
    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities


@register("ZipMap", 1, domain="ai.onnx.ml")
def convert_zipmap(node, graph):
    return result(node, ZipMapAsTensor())


class ArrayFeatureExtractor(nn.Module):
    """X[..., indices] on the last axis; a 1-D X gives [1, len(indices)] (as onnxruntime does)."""

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        picked = x.index_select(-1, indices.reshape(-1).long())
        return picked.reshape(1, -1) if x.dim() == 1 else picked


@register("ArrayFeatureExtractor", 1, domain="ai.onnx.ml")
def convert_array_feature_extractor(node, graph):
    return result(node, ArrayFeatureExtractor())


class Binarizer(nn.Module):
    """1 where x > threshold, else 0, in x's type."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)


@register("Binarizer", 1, domain="ai.onnx.ml")
def convert_binarizer(node, graph):
    return result(node, Binarizer(float(node.attributes.get("threshold", 0.0))))


# --- scikit-learn's linear models and preprocessing, as expansions into ONNX ops -------------------
# skl2onnx writes LogisticRegression, LinearSVC, Ridge, SGD... as LinearClassifier/LinearRegressor and
# StandardScaler, MinMaxScaler, Normalizer as Scaler/Normalizer. Each is built from the ai.onnx ops it
# computes (Gemm with its weights, Softmax or Sigmoid, ReduceL1/L2/Max and Div, Sub and Mul), so
# DeepLift gives every step the rule of the op it is (converters/microsoft.Expansion, spliced in by
# the rewrite), and the formulas are onnxruntime's, which `verify` checks.


class _Affine(nn.Module):
    """x @ weightᵀ + bias, the weights the node's attributes (a Gemm with transB=1)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight.dtype) @ self.weight.T + self.bias


class _Constant(nn.Module):
    """x op c for a constant c (Sub or Mul of one varying operand: a linear step)."""

    def __init__(self, op: str, value: torch.Tensor):
        super().__init__()
        self.op = op
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.value.dtype)
        return x - self.value if self.op == "Sub" else x * self.value


class _Labels(nn.Module):
    """The class label of each row's highest score (its index where the labels are strings, which
    torch cannot hold)."""

    def __init__(self, labels: torch.Tensor | None):
        super().__init__()
        self.register_buffer("labels", labels)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        index = scores.argmax(-1)
        return index if self.labels is None else self.labels[index]


class _ToFloat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32)


class _Divide(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a / b


def _weights(node, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    coefficients = torch.tensor(list(node.attributes["coefficients"]), dtype=torch.float32)
    if outputs <= 0 or coefficients.numel() % outputs:
        raise NotImplementedError(f"{node.operation_type} with {coefficients.numel()} coefficients for {outputs} outputs")
    intercepts = list(node.attributes.get("intercepts", [])) or [0.0] * outputs
    return coefficients.reshape(outputs, -1), torch.tensor(intercepts, dtype=torch.float32)


def _post_transform(node, e, scores):
    transform = text_attribute(node, "post_transform", "NONE")
    if transform == "NONE":
        return scores
    if transform == "SOFTMAX":
        return e.step("Softmax", nn.Softmax(dim=-1), scores, attrs={"axis": -1})
    if transform == "LOGISTIC":
        return e.step("Sigmoid", nn.Sigmoid(), scores)
    raise NotImplementedError(f"{node.operation_type} post_transform {transform!r} (NONE, SOFTMAX or LOGISTIC)")


@register("LinearClassifier", 1, domain="ai.onnx.ml")
def convert_linear_classifier(node, graph):
    """Y = the label of the highest score, Z = post_transform(X Wᵀ + b): one row of weights per class."""
    from onnx_attr.importing.converters.microsoft import Expansion

    ints, strings = node.attributes.get("classlabels_ints"), node.attributes.get("classlabels_strings")
    classes = len(ints) if ints is not None else len(strings or [])
    weight, bias = _weights(node, len(node.attributes.get("intercepts", [])) or classes)
    if weight.shape[0] != classes:
        raise NotImplementedError(f"LinearClassifier with {weight.shape[0]} row(s) of weights for {classes} classes "
                                  "(one row per class is supported)")
    e = Expansion(1)
    scores = e.step("Gemm", _Affine(weight, bias), e.inputs[0], attrs={"transB": 1})
    labels = e.step("ArgMax", _Labels(torch.tensor(list(ints), dtype=torch.int64) if ints is not None else None), scores,
                    attrs={"axis": -1, "keepdims": 0})
    return result(node, e.build((labels, _post_transform(node, e, scores))))


@register("LinearRegressor", 1, domain="ai.onnx.ml")
def convert_linear_regressor(node, graph):
    from onnx_attr.importing.converters.microsoft import Expansion

    weight, bias = _weights(node, int(node.attributes.get("targets", 1)))
    if text_attribute(node, "post_transform", "NONE") != "NONE":
        raise NotImplementedError(f"LinearRegressor post_transform {text_attribute(node, 'post_transform', '')!r}")
    e = Expansion(1)
    return result(node, e.build(e.step("Gemm", _Affine(weight, bias), e.inputs[0], attrs={"transB": 1})))


@register("Scaler", 1, domain="ai.onnx.ml")
def convert_scaler(node, graph):
    """(X − offset) · scale, per feature (or one value for all)."""
    from onnx_attr.importing.converters.microsoft import Expansion

    e = Expansion(1)
    offset = torch.tensor(list(node.attributes.get("offset", [0.0])), dtype=torch.float32)
    scale = torch.tensor(list(node.attributes.get("scale", [1.0])), dtype=torch.float32)
    shifted = e.step("Sub", _Constant("Sub", offset), e.inputs[0])
    return result(node, e.build(e.step("Mul", _Constant("Mul", scale), shifted)))


@register("Normalizer", 1, domain="ai.onnx.ml")
def convert_normalizer(node, graph):
    """Each row divided by its max (MAX), Σ|x| (L1) or √Σx² (L2)."""
    from onnx_attr.importing.converters.microsoft import Expansion
    from onnx_attr.importing.converters.reduce import Reduce

    norm = text_attribute(node, "norm", "MAX")
    op = {"MAX": "ReduceMax", "L1": "ReduceL1", "L2": "ReduceL2"}.get(norm)
    if op is None:
        raise NotImplementedError(f"Normalizer norm {norm!r} (MAX, L1 or L2)")
    e = Expansion(1)
    x = e.step("Cast", _ToFloat(), e.inputs[0], attrs={"to": 1})  # onnxruntime's output is float
    size = e.step(op, Reduce(op, True, False, [-1]), x, attrs={"axes": [-1], "keepdims": 1})
    return result(node, e.build(e.step("Div", _Divide(), x, size)))
