"""The ai.onnx.ml ops that scikit-learn's neural models export around their tensors.

ZipMap turns a [N, C] probability tensor into a sequence of {class: probability} maps, a value
PyTorch has no type for; it is imported as the tensor itself, columns in the order of its class
labels (which is the order of the maps' keys), and `verify` compares it so.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

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


class OneHotEncoder(nn.Module):
    """ai.onnx.ml OneHotEncoder over integer categories: a 1.0 at each value's position in the category
    list (the last position where the list repeats a value, as onnxruntime's map keeps it), along a
    new last axis; a value not in the list gives zeros, or is refused where `zeros` is 0. Float and
    int32 values are truncated to int64 first. A selection of constants: no gradient follows the
    values (the op kind table says so), so a categorical input is held, not attributed."""

    def __init__(self, categories: list[int], zeros: bool):
        super().__init__()
        values = torch.tensor(categories, dtype=torch.int64)
        last = torch.tensor([categories.index(v, i + 1) if v in categories[i + 1:] else -1 for i, v in enumerate(categories)])
        self.register_buffer("categories", values)
        self.register_buffer("kept", last < 0)  # the last occurrence of each value
        self.zeros = zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hot = (x.to(torch.int64).unsqueeze(-1) == self.categories) & self.kept
        if not self.zeros and not bool(hot.any(-1).all()):
            raise ValueError("OneHotEncoder met a value outside its categories, and its `zeros` attribute is 0")
        return hot.to(torch.float32)


@register("OneHotEncoder", 1, domain="ai.onnx.ml")
def convert_one_hot_encoder(node, graph):
    if node.attributes.get("cats_strings"):
        raise NotImplementedError("OneHotEncoder over strings (torch holds no strings: export the categories as "
                                  "int64 codes, e.g. an OrdinalEncoder before the model)")
    categories = [int(v) for v in node.attributes.get("cats_int64s", [])]
    if not categories:
        raise ValueError("OneHotEncoder has no categories")
    return result(node, OneHotEncoder(categories, bool(node.attributes.get("zeros", 1))))


class LabelEncoder(nn.Module):
    """ai.onnx.ml LabelEncoder between numbers (scikit-learn's OrdinalEncoder and TargetEncoder over numeric
    categories): each value's key looked up (a sorted search), its value out, the default where no key
    matches; a NaN key maps NaN. A repeated key keeps its first value, as onnxruntime's map does. A
    lookup of constants: no gradient follows the keys (the op kind table says so)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray, default):
        super().__init__()
        first = np.unique(keys, return_index=True)[1]  # each key's first position (NaN keys: each its own)
        nan = np.isnan(keys) if keys.dtype.kind == "f" else np.zeros(len(keys), bool)
        kept = np.sort(first[~nan[first]])
        order = np.argsort(keys[kept], kind="stable")
        self.register_buffer("keys", torch.from_numpy(np.ascontiguousarray(keys[kept][order])))
        self.register_buffer("values", torch.from_numpy(np.ascontiguousarray(values[kept][order])))
        self.register_buffer("default", torch.tensor(default, dtype=self.values.dtype))
        self.register_buffer("nan_value", torch.from_numpy(values[np.flatnonzero(nan)[:1]]) if nan.any() else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1).to(self.keys.dtype)
        if not self.keys.numel():
            out = self.default.expand(flat.shape).clone()
        else:
            at = torch.searchsorted(self.keys, flat.contiguous()).clamp(max=self.keys.numel() - 1)
            out = torch.where(self.keys[at] == flat, self.values[at], self.default)
        if self.nan_value is not None:
            out = torch.where(torch.isnan(flat), self.nan_value, out)
        return out.reshape(x.shape)


_LABEL_TYPES = {"floats": np.float32, "int64s": np.int64}


_STRING_LABELS = "LabelEncoder of strings (torch holds no strings: encode the categories as numbers before the model)"


@register("LabelEncoder", 1, domain="ai.onnx.ml")
def convert_label_encoder_1(node, graph):
    """Version 1 maps strings to int64 or back (`classes_strings`), and nothing else."""
    raise NotImplementedError(_STRING_LABELS)


@register("LabelEncoder", 2, 4, domain="ai.onnx.ml")
def convert_label_encoder(node, graph):
    attrs = node.attributes
    keys = next(((np.asarray(_listed(attrs[f"keys_{k}"]), t), k) for k, t in _LABEL_TYPES.items() if attrs.get(f"keys_{k}")),
                None) or ((_tensor_attribute(attrs["keys_tensor"]), "tensor") if attrs.get("keys_tensor") is not None else None)
    values = next(((np.asarray(_listed(attrs[f"values_{k}"]), t), k) for k, t in _LABEL_TYPES.items()
                   if attrs.get(f"values_{k}")), None) or (
        (_tensor_attribute(attrs["values_tensor"]), "tensor") if attrs.get("values_tensor") is not None else None)
    if keys is None or values is None or keys[0].dtype.kind not in "fi" or values[0].dtype.kind not in "fi":
        raise NotImplementedError(_STRING_LABELS)
    if len(keys[0]) != len(values[0]):
        raise ValueError(f"LabelEncoder has {len(keys[0])} keys and {len(values[0])} values")
    if attrs.get("default_tensor") is not None:
        default = _tensor_attribute(attrs["default_tensor"]).reshape(-1)[0].item()
    else:
        default = float(attrs.get("default_float", -0.0)) if values[0].dtype.kind == "f" else \
            int(attrs.get("default_int64", -1))
    return result(node, LabelEncoder(keys[0].reshape(-1), values[0].reshape(-1), default))


def _tensor_attribute(value) -> np.ndarray:
    from onnx import numpy_helper

    if hasattr(value, "to_torch"):
        value = value.to_torch()
    if isinstance(value, torch.Tensor):
        return value.numpy()
    return numpy_helper.to_array(value) if hasattr(value, "data_type") else np.asarray(value)


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


def _weights(node, outputs: int, graph=None) -> tuple[torch.Tensor, torch.Tensor]:
    """[outputs, features] weights and the intercepts. onnxruntime reads the coefficients as
    [outputs, the input's feature count], row by row: a file with more of them than that (the
    iris sample in onnxruntime's own wheel: 12 coefficients, 3 classes, a declared [3, 2] input)
    runs there on the first outputs × features, and so here; one with fewer is refused."""
    coefficients = torch.tensor(list(node.attributes["coefficients"]), dtype=torch.float32)
    features = _declared_features(graph, node.input_values[0]) if graph is not None and outputs > 0 else None
    if features is not None and coefficients.numel() != outputs * features:
        if coefficients.numel() < outputs * features:
            raise NotImplementedError(f"{node.operation_type} with {coefficients.numel()} coefficients for {outputs} "
                                      f"outputs of an input of {features} features (needs {outputs * features})")
        coefficients = coefficients[:outputs * features]
    if outputs <= 0 or coefficients.numel() % outputs:
        raise NotImplementedError(f"{node.operation_type} with {coefficients.numel()} coefficients for {outputs} outputs")
    intercepts = list(node.attributes.get("intercepts", [])) or [0.0] * outputs
    return coefficients.reshape(outputs, -1), torch.tensor(intercepts, dtype=torch.float32)


def _declared_features(graph, name: str) -> int | None:
    """The last dim of `name` as the graph declares it (a graph input, or inferred), when fixed."""
    info = graph.value_info.get(name) or next((v for v in graph.proto.input if v.name == name), None)
    if info is None or not info.type.HasField("tensor_type"):
        return None
    dims = info.type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if len(dims) and dims[-1].HasField("dim_value") and dims[-1].dim_value else None


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
    weight, bias = _weights(node, len(node.attributes.get("intercepts", [])) or classes, graph)
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

    weight, bias = _weights(node, int(node.attributes.get("targets", 1)), graph)
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


class _Impute(nn.Module):
    """x with each missing entry (NaN, or the replaced value) set to its feature's imputed value."""

    def __init__(self, imputed: torch.Tensor, replaced: float):
        super().__init__()
        self.register_buffer("imputed", imputed)
        self.replaced = replaced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(x) if math.isnan(self.replaced) else x == self.replaced
        return torch.where(missing, self.imputed.to(x.dtype), x)


@register("Imputer", 1, domain="ai.onnx.ml")
def convert_imputer(node, graph):
    """scikit-learn's SimpleImputer: elementwise in its one input, a jump to the fitted value at each
    missing entry (NaN, or the value `replaced_value_*` names)."""
    from onnx_attr.importing.converters.microsoft import Expansion

    floats, ints = node.attributes.get("imputed_value_floats"), node.attributes.get("imputed_value_int64s")
    if ints:
        imputed, replaced = torch.tensor(list(ints), dtype=torch.int64), float(node.attributes.get("replaced_value_int64", 0))
    else:
        imputed, replaced = torch.tensor(list(floats or [0.0]), dtype=torch.float32), \
            float(node.attributes.get("replaced_value_float", 0.0))
    e = Expansion(1)  # its own step: DeepLift's secant (rules/unary.py), a missing value's fill included
    return result(node, e.build(e.step("Imputer", _Impute(imputed, replaced), e.inputs[0])))


# --- tree ensembles (scikit-learn's forests and boosted trees, LightGBM, XGBoost) -------------------
_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5, "LEAF": 6,
          "BRANCH_MEMBER": 7}
_COMPARISONS = (torch.le, torch.lt, torch.ge, torch.gt, torch.eq, torch.ne)  # in _MODES' order
_MEMBER = _MODES["BRANCH_MEMBER"]  # TreeEnsemble-5's set membership (a categorical split)


def _mode_codes(values) -> np.ndarray:
    """Each node's mode as its `_MODES` code, compared as bytes against each mode name (millions of
    nodes: no sort of strings, no Python per node)."""
    names = values if isinstance(values, np.ndarray) else np.asarray(list(values))
    if names.dtype.kind not in "SU":  # bytes and str mixed
        names = np.asarray([_text(v) for v in names.tolist()])
    codes = np.full(len(names), -1, np.int64)
    for name, code in _MODES.items():
        codes[names == (name.encode() if names.dtype.kind == "S" else name)] = code
    if (codes < 0).any():
        found = sorted({_text(n) for n in np.unique(names).tolist()})
        raise NotImplementedError(f"tree node modes {found}")
    return codes


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ints(values) -> np.ndarray:
    return np.asarray(values if not hasattr(values, "tolist") else values, dtype=np.int64).reshape(-1)


class _NodeIndex:
    """(tree id, node id) -> the node's position in the attribute arrays, for whole arrays at once: each
    pair as one key made of the ranks of its ids among those listed (ids come from the file: any int64)."""

    def __init__(self, trees: np.ndarray, ids: np.ndarray):
        self.tree_ids, self.node_ids = np.unique(trees), np.unique(ids)
        keys, _ = self._keys(trees, ids)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        if len(self.keys) > 1 and (self.keys[1:] == self.keys[:-1]).any():
            raise ValueError("a tree ensemble lists a (tree, node) twice")

    def _keys(self, trees: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, bool]:
        """Each pair's key, and whether every id is one listed (by lookup in the sorted ids, not `np.isin`,
        which sorts both sides again: seconds on millions of nodes)."""
        ranks = []
        listed = True
        for values, known in ((trees, self.tree_ids), (ids, self.node_ids)):
            rank = np.searchsorted(known, values)
            listed = listed and bool(len(known)) and bool((known[np.minimum(rank, len(known) - 1)] == values).all())
            ranks.append(rank)
        return ranks[0] * (len(self.node_ids) + 1) + ranks[1], listed

    def __call__(self, trees: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
        wanted, listed = self._keys(trees, ids)
        at = np.clip(np.searchsorted(self.keys, wanted), 0, max(len(self.keys) - 1, 0))
        if not len(self.keys) or not listed or (self.keys[at] != wanted).any():
            raise ValueError(f"a tree ensemble's {what} names a node it does not list")
        return self.order[at]


class TreeEnsemble(nn.Module):
    """ai.onnx.ml TreeEnsembleClassifier/Regressor: every tree walked at once, one level a step (all
    rows and trees in one gather per level), the leaves' weights summed per class or target, plus
    base_values, then post_transform. Piecewise constant: no gradient, so DeepLift and IG refuse it
    by name and the perturbation methods explain it. A classifier writing one score for two classes
    (a boosted binary model) gives the pair as onnxruntime does."""

    def __init__(self, attrs: dict, classifier: bool):
        super().__init__()
        from onnx_attr.importing.budget import current_budget

        # numpy over the node arrays throughout: a LightGBM export holds millions of nodes (4.85 M in a
        # 194 MB model), where per-node Python took a minute and gigabytes
        prefix = "class" if classifier else "target"
        trees, ids = _ints(attrs["nodes_treeids"]), _ints(attrs["nodes_nodeids"])
        index_of = _NodeIndex(trees, ids)
        modes = _mode_codes(attrs["nodes_modes"])
        leaf = _MODES["LEAF"]
        interior = modes != leaf
        nodes = np.arange(len(trees))

        def link(key: str) -> np.ndarray:
            target = nodes.copy()
            target[interior] = index_of(trees[interior], _ints(attrs[key])[interior], key)
            return target

        self.register_buffer("feature", torch.from_numpy(_ints(attrs["nodes_featureids"])))
        # float64 splits (TreeEnsemble-5 over doubles) stay float64: rounded, a row at a split would change side
        wide = getattr(attrs["nodes_values"], "dtype", None) == np.float64
        self.register_buffer("threshold", torch.from_numpy(np.asarray(attrs["nodes_values"],
                                                                      np.float64 if wide else np.float32)))
        self.register_buffer("mode", torch.from_numpy(modes))
        if_true, if_false = link("nodes_truenodeids"), link("nodes_falsenodeids")
        self.register_buffer("if_true", torch.from_numpy(if_true))
        self.register_buffer("if_false", torch.from_numpy(if_false))
        missing = np.asarray(list(attrs.get("nodes_missing_value_tracks_true", [])) or np.zeros(len(trees)), bool)
        self.register_buffer("missing_true", torch.from_numpy(missing))
        child = np.zeros(len(trees), bool)
        child[if_true[interior]] = True
        child[if_false[interior]] = True
        candidates = np.flatnonzero(~child)
        _, first = np.unique(trees[candidates], return_index=True)  # each tree's first node no other node points to
        self.register_buffer("roots", torch.from_numpy(candidates[np.sort(first)]))
        self.depth = self._depth(if_true, if_false, interior, current_budget())
        single = np.flatnonzero(np.bincount(modes[interior], minlength=len(_MODES)))
        self.single_mode = int(single[0]) if len(single) == 1 else None  # most ensembles compare one way
        outputs = (len(attrs.get("classlabels_int64s", []) or attrs.get("classlabels_strings", [])) if classifier
                   else int(attrs.get("n_targets", 1)))
        weight_ids = _ints(attrs[f"{prefix}_ids"])
        if (weight_ids < 0).any():
            raise ValueError(f"a tree ensemble's {prefix}_ids has a negative id")
        columns = int(max(outputs, int(weight_ids.max()) + 1 if len(weight_ids) else 0))
        # ids come from the file: a class id of 2^40 would ask for that many columns per node
        current_budget().check("max_elements", len(trees) * columns, "a tree ensemble's leaf weights")
        weights = torch.zeros(len(trees), columns, dtype=torch.float64)
        rows = index_of(_ints(attrs[f"{prefix}_treeids"]), _ints(attrs[f"{prefix}_nodeids"]), f"{prefix}_nodeids")
        weights.index_put_((torch.from_numpy(rows), torch.from_numpy(weight_ids)),
                           torch.from_numpy(np.asarray(attrs[f"{prefix}_weights"], np.float64)), accumulate=True)
        self.register_buffer("weights", weights)
        base = list(attrs.get("base_values", [])) or [0.0] * columns
        self.register_buffer("base", torch.tensor(base, dtype=torch.float64))
        self.aggregate = _text(attrs.get("aggregate_function", "SUM"))
        if self.aggregate not in ("SUM", "AVERAGE"):
            raise NotImplementedError(f"tree ensemble aggregate_function {self.aggregate!r} (SUM or AVERAGE)")
        self.transform = _text(attrs.get("post_transform", "NONE"))
        if self.transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
            raise NotImplementedError(f"tree ensemble post_transform {self.transform!r} (NONE, LOGISTIC or SOFTMAX)")
        self.classifier, self.outputs = classifier, outputs
        self.binary = classifier and outputs == 2 and len(weight_ids) > 0 and bool((weight_ids == weight_ids[0]).all())
        self.binary_column = int(weight_ids[0]) if len(weight_ids) else 0  # the one class the weights score
        self.positive = bool((np.asarray(attrs[f"{prefix}_weights"], np.float64) >= 0).all())
        labels = attrs.get("classlabels_int64s")
        self.register_buffer("labels", torch.tensor(list(labels), dtype=torch.int64) if labels else None)
        self._sets(modes, attrs.get("membership_sets"))

    def _sets(self, modes: np.ndarray, sets: Optional[list]) -> None:
        """BRANCH_MEMBER nodes' sets as one sorted array of keys node · (U + 1) + rank of the value among
        the U distinct members: a membership test of every (row, node) pair is two binary searches."""
        members = np.flatnonzero(modes == _MEMBER)
        sets = sets or []
        if len(sets) != len(members):
            raise ValueError(f"a tree ensemble has {len(members)} set-membership node(s) but {len(sets)} set(s) of members")
        values = np.unique(np.concatenate([np.asarray(v, np.float64) for v in sets])) if sets else np.zeros(0)
        keys = np.concatenate([node * (len(values) + 1) + np.searchsorted(values, np.asarray(v, np.float64))
                               for node, v in zip(members, sets)]) if sets else np.zeros(0, np.int64)
        self.register_buffer("member_values", torch.from_numpy(values))
        self.register_buffer("member_keys", torch.from_numpy(np.unique(keys).astype(np.int64)))

    def _member(self, value: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        """Whether each value is in its node's set."""
        values, keys = self.member_values, self.member_keys
        if not len(keys):
            return torch.zeros(value.shape, dtype=torch.bool, device=value.device)
        wide = value.double()
        rank = torch.searchsorted(values, wide).clamp(max=len(values) - 1)
        key = node * (len(values) + 1) + rank
        at = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
        return (values[rank] == wide) & (keys[at] == key)

    def _depth(self, if_true: np.ndarray, if_false: np.ndarray, interior: np.ndarray, budget) -> int:
        """Levels of the deepest tree, walked from the roots one level at a time (every tree at once).
        A tree that loops back on itself never runs out of nodes: its walk meets the loop budget, or
        runs longer than there are nodes, and is refused."""
        frontier, levels = self.roots.numpy(), 0
        limit = budget.max_loop_iterations if hasattr(budget, "max_loop_iterations") else None
        reached = np.zeros(len(interior), bool)  # a level's children, each once (two parents may share one)
        while True:
            frontier = frontier[interior[frontier]]
            if not len(frontier):
                return levels
            levels += 1
            if levels > len(interior):
                raise ValueError("a tree of the ensemble loops back on itself")
            if limit is not None and levels > limit:
                budget.check("max_loop_iterations", levels, "a tree ensemble's depth (levels walked per call)")
            reached[if_true[frontier]] = True
            reached[if_false[frontier]] = True
            frontier = np.flatnonzero(reached)  # a scan of the nodes a level, not a sort of millions
            reached[frontier] = False

    def _packed(self) -> torch.Tensor:
        """Per node, what a level of the walk reads (feature, threshold, true child, false child, whether
        a missing value goes true) side by side in one float64 row: one gather a level instead of five,
        which on millions of nodes are five cache misses each (exact: ids < 2^53, float32 thresholds)."""
        if getattr(self, "_packed_nodes", None) is None or self._packed_nodes.device != self.feature.device:
            self._packed_nodes = torch.stack([self.feature.double(), self.threshold.double(), self.if_true.double(),
                                              self.if_false.double(), self.missing_true.double()], 1)
        return self._packed_nodes

    def _leaves(self, rows: torch.Tensor) -> torch.Tensor:
        """The leaf each row reaches in each tree: every tree walked at once, one level a step (a leaf's
        children are itself, so it stays)."""
        packed = self._packed()
        node = self.roots.expand(rows.shape[0], -1)
        for _ in range(self.depth):
            at = packed[node]
            go_true = self._goes_true(rows.gather(1, at[..., 0].long()), at[..., 1], node, at[..., 4] > 0)
            node = torch.where(go_true, at[..., 2], at[..., 3]).long()
        return node

    def _goes_true(self, value: torch.Tensor, threshold: torch.Tensor, node: torch.Tensor,
                   missing_true: torch.Tensor) -> torch.Tensor:
        """Whether `value` (a row's feature at `node`) takes the node's true branch: its comparison
        with the threshold (in the value's type), a NaN where the node's missing track says."""
        threshold = threshold.to(value.dtype)
        if self.single_mode == _MEMBER:
            go_true = self._member(value, node)
        elif self.single_mode is not None:
            go_true = _COMPARISONS[self.single_mode](value, threshold)
        else:
            mode = self.mode[node]
            tests = [compare(value, threshold) for compare in _COMPARISONS]
            if len(self.member_keys):
                tests.append(self._member(value, node))
            column = torch.where(mode == _MEMBER, len(_COMPARISONS), mode.clamp(max=len(_COMPARISONS) - 1))
            go_true = torch.stack(tests, -1).gather(-1, column.clamp(max=len(tests) - 1).unsqueeze(-1)).squeeze(-1)
        missing = torch.isnan(value)  # a NaN goes where its node's track says (BRANCH_NEQ: NaN != t, true)
        if self.single_mode is None:
            missing &= self.mode[node] != _MODES["BRANCH_NEQ"]
        elif self.single_mode == _MODES["BRANCH_NEQ"]:
            missing = torch.zeros_like(missing)
        return torch.where(missing, missing_true, go_true)

    def output_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The scores' type: float32, as onnxruntime's classifier and regressor write them."""
        return torch.float32

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the walk reads it: one row of features per example."""
        rows = x.reshape(1, -1) if x.dim() == 1 else x.reshape(x.shape[0], -1)
        return rows.to(torch.float32) if not rows.is_floating_point() else rows

    def takes_true(self, rows: torch.Tensor, row: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        """Whether row `row[i]` takes interior node `node[i]`'s true branch (`row` broadcast over
        `node`'s trailing axes), exactly as the walk decides it: the DeepLift rule's hybrid inputs
        (rules/trees.py)."""
        at = row.reshape(row.shape + (1,) * (node.dim() - row.dim())).expand_as(node)
        return self._goes_true(rows[at, self.feature[node]], self.threshold[node], node, self.missing_true[node])

    def margins(self, x: torch.Tensor) -> torch.Tensor:
        """The summed leaf weights per class or target (averaged, plus base_values), in float64,
        before the post_transform: what the trees add up to."""
        rows = self.rows(x)
        chunk = max(1, (1 << 20) // max(1, self.roots.numel()))  # a level's gather: ~40 MB at most
        node = torch.cat([self._leaves(part) for part in rows.split(chunk)]) if rows.shape[0] else \
            self.roots.expand(0, -1)
        # each row's leaves' weights summed without a [rows, trees, columns] gather (a LightGBM model:
        # 10⁴ trees × 11 classes, 0.9 GB per thousand rows)
        scores = torch.nn.functional.embedding_bag(node, self.weights, mode="sum")
        if self.aggregate == "AVERAGE":
            scores = scores / self.roots.numel()
        return scores + self.base

    def forward(self, x: torch.Tensor):
        scores = self.margins(x)
        if self.binary:
            s = scores[:, self.binary_column:self.binary_column + 1]
            won = s > (0.5 if self.positive else 0)  # onnxruntime's vote: on the margin, before the post_transform
            index = won.squeeze(1).long()
            return (index if self.labels is None else self.labels[index]), self.transformed(scores, self.output_dtype(x))
        scores = self.transformed(scores, self.output_dtype(x))
        if not self.classifier:
            return scores
        index = scores.argmax(-1)
        return (index if self.labels is None else self.labels[index]), scores

    def transformed(self, scores: torch.Tensor, dtype: torch.dtype, sigmoid=torch.sigmoid, softmax=None) -> torch.Tensor:
        """The output scores from the margins, through the post_transform (`sigmoid`, `softmax`: the
        DeepLift rule passes its paired ones). A binary classifier's one score s for two classes gives
        [1 - s, s] (probabilities, all weights positive) or [-s, s] (margins)."""
        softmax = softmax or (lambda z: torch.softmax(z, -1))
        if self.binary:
            s = scores[:, self.binary_column:self.binary_column + 1]
            if self.transform == "LOGISTIC":
                p = sigmoid(s)
                pair = torch.cat([1 - p, p], 1)
            elif self.transform == "SOFTMAX":
                pair = softmax(torch.cat([-s, s], 1))
            else:
                pair = torch.cat([1 - s, s], 1) if self.positive else torch.cat([-s, s], 1)
            return pair.to(dtype)
        scores = scores[:, :self.outputs] if self.classifier else scores
        if self.transform == "LOGISTIC":
            scores = sigmoid(scores)
        elif self.transform == "SOFTMAX":
            scores = softmax(scores)
        return scores.to(dtype)


@register("TreeEnsembleClassifier", 1, 3, domain="ai.onnx.ml")
def convert_tree_ensemble_classifier(node, graph):
    return result(node, TreeEnsemble(dict(node.attributes), classifier=True))


@register("TreeEnsembleRegressor", 1, 3, domain="ai.onnx.ml")
def convert_tree_ensemble_regressor(node, graph):
    return result(node, TreeEnsemble(dict(node.attributes), classifier=False))


def _listed(value) -> list:
    """An attribute's values as a list: ints/floats as given, a tensor attribute however onnx2torch hands it over."""
    if value is None:
        return []
    if hasattr(value, "to_torch"):
        value = value.to_torch()
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).tolist()
    if hasattr(value, "tolist"):
        return list(value.reshape(-1).tolist())
    if hasattr(value, "data_type"):  # a TensorProto
        from onnx import numpy_helper

        return numpy_helper.to_array(value).reshape(-1).tolist()
    return list(value)


_V5_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ", "BRANCH_MEMBER")


def tree_ensemble_5(attrs: dict) -> dict:
    """ai.onnx.ml TreeEnsemble-5 (nodes and leaves apart, roots listed, enums as ints) as the
    TreeEnsembleRegressor attributes `TreeEnsemble` reads: leaves become LEAF nodes after the
    interior ones, each node given the tree whose root reaches it."""
    features = _listed(attrs.get("nodes_featureids"))
    n, weights = len(features), _listed(attrs.get("leaf_weights"))
    modes = [int(m) for m in _listed(attrs.get("nodes_modes"))]
    if any(m >= len(_V5_MODES) for m in modes):
        raise NotImplementedError(f"TreeEnsemble node modes {sorted({m for m in modes if m >= len(_V5_MODES)})}")

    def children(side: str) -> list[int]:
        ids, leafs = _listed(attrs.get(f"nodes_{side}nodeids")), _listed(attrs.get(f"nodes_{side}leafs"))
        return [n + int(i) if int(is_leaf) else int(i) for i, is_leaf in zip(ids, leafs)]

    true, false = children("true"), children("false")
    tree_of: dict[int, int] = {}
    for t, root in enumerate(_listed(attrs.get("tree_roots"))):
        stack = [int(root)]
        while stack:
            k = stack.pop()
            if k in tree_of:
                continue
            tree_of[k] = t
            if k < n:
                stack += [true[k], false[k]]
    ids = list(range(n + len(weights)))
    aggregate = {0: "AVERAGE", 1: "SUM", 2: "MIN", 3: "MAX"}.get(int(attrs.get("aggregate_function", 1)), "?")
    transform = {0: "NONE", 1: "SOFTMAX", 2: "LOGISTIC", 3: "SOFTMAX_ZERO", 4: "PROBIT"}.get(
        int(attrs.get("post_transform", 0)), "?")
    missing = _listed(attrs.get("nodes_missing_value_tracks_true")) or [0] * n
    return {"nodes_treeids": [tree_of.get(k, 0) for k in ids], "nodes_nodeids": ids,
            "nodes_featureids": features + [0] * len(weights), "nodes_values": _splits(attrs.get("nodes_splits"), len(weights)),
            "nodes_modes": [_V5_MODES[m] for m in modes] + ["LEAF"] * len(weights),
            "nodes_truenodeids": true + [0] * len(weights), "nodes_falsenodeids": false + [0] * len(weights),
            "nodes_missing_value_tracks_true": list(missing) + [0] * len(weights),
            "target_treeids": [tree_of.get(n + j, 0) for j in range(len(weights))],
            "target_nodeids": [n + j for j in range(len(weights))], "target_ids": _listed(attrs.get("leaf_targetids")),
            "target_weights": weights, "n_targets": int(attrs.get("n_targets", 1)), "aggregate_function": aggregate,
            "post_transform": transform, "membership_sets": _membership_sets(attrs.get("membership_values"),
                                                                            modes.count(_V5_MODES.index("BRANCH_MEMBER")))}


def _membership_sets(value, count: int) -> list[np.ndarray]:
    """TreeEnsemble-5's membership_values, one set per BRANCH_MEMBER node in node order, NaN-separated."""
    if not count:
        return []
    if hasattr(value, "to_torch"):
        value = value.to_torch()
    if hasattr(value, "data_type"):  # a TensorProto
        from onnx import numpy_helper

        value = numpy_helper.to_array(value)
    flat = np.asarray(_listed(value) if value is not None else [], np.float64)
    sets = [part[~np.isnan(part)] for part in np.split(flat, np.flatnonzero(np.isnan(flat)))][:count]
    if len(sets) != count:
        raise ValueError(f"TreeEnsemble: {count} set-membership node(s) but membership_values holds {len(sets)} set(s)")
    return sets


def _splits(value, leaves: int) -> np.ndarray:
    """The interior nodes' thresholds in their own type (float or double), then a 0 per leaf."""
    if hasattr(value, "to_torch"):
        value = value.to_torch()
    if hasattr(value, "data_type"):  # a TensorProto
        from onnx import numpy_helper

        value = numpy_helper.to_array(value)
    wide = getattr(value, "dtype", None) in (np.float64, torch.float64)
    return np.asarray(_listed(value) + [0.0] * leaves, np.float64 if wide else np.float32)


class TreeEnsemble5(TreeEnsemble):
    """TreeEnsemble-5: the regressor's walk; its output has the input's floating type."""

    def output_dtype(self, x: torch.Tensor) -> torch.dtype:
        return x.dtype if x.is_floating_point() else torch.float32


@register("TreeEnsemble", 5, domain="ai.onnx.ml")
def convert_tree_ensemble_5(node, graph):
    return result(node, TreeEnsemble5(tree_ensemble_5(dict(node.attributes)), classifier=False))
