"""The ai.onnx.ml ops that scikit-learn's neural models export around their tensors.

ZipMap turns a [N, C] probability tensor into a sequence of {class: probability} maps, a value
PyTorch has no type for; it is imported as the tensor itself, columns in the order of its class
labels (which is the order of the maps' keys), and `verify` compares it so.
"""

from __future__ import annotations

import math

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
        if x.dim() > 2:
            raise ValueError(f"OneHotEncoder takes an input of rank 2 at most (onnxruntime's limit), got {x.dim()}")
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
    """scikit-learn's SimpleImputer: a Where of one varying input (linear: the kept entries pass their
    multiplier, the imputed ones none)."""
    from onnx_attr.importing.converters.microsoft import Expansion

    floats, ints = node.attributes.get("imputed_value_floats"), node.attributes.get("imputed_value_int64s")
    if ints:
        imputed, replaced = torch.tensor(list(ints), dtype=torch.int64), float(node.attributes.get("replaced_value_int64", 0))
    else:
        imputed, replaced = torch.tensor(list(floats or [0.0]), dtype=torch.float32), \
            float(node.attributes.get("replaced_value_float", 0.0))
    e = Expansion(1)
    return result(node, e.build(e.step("Where", _Impute(imputed, replaced), e.inputs[0])))


# --- tree ensembles (scikit-learn's forests and boosted trees, LightGBM, XGBoost) -------------------
_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5, "LEAF": 6}
_COMPARISONS = (torch.le, torch.lt, torch.ge, torch.gt, torch.eq, torch.ne)  # in _MODES' order


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class TreeEnsemble(nn.Module):
    """ai.onnx.ml TreeEnsembleClassifier/Regressor: every tree walked at once, one level a step (all
    rows and trees in one gather per level), the leaves' weights summed per class or target, plus
    base_values, then post_transform. Piecewise constant: no gradient, so DeepLift and IG refuse it
    by name and the perturbation methods explain it. A classifier writing one score for two classes
    (a boosted binary model) gives the pair as onnxruntime does."""

    def __init__(self, attrs: dict, classifier: bool):
        super().__init__()
        prefix = "class" if classifier else "target"
        trees, ids = list(attrs["nodes_treeids"]), list(attrs["nodes_nodeids"])
        where = {(t, n): i for i, (t, n) in enumerate(zip(trees, ids))}
        if len(where) != len(trees):
            raise ValueError("a tree ensemble lists a (tree, node) twice")
        modes = [_MODES.get(_text(m)) for m in attrs["nodes_modes"]]
        if None in modes:
            raise NotImplementedError(f"tree node modes {sorted(set(attrs['nodes_modes']))}")
        leaf = _MODES["LEAF"]
        link = lambda key: torch.tensor([i if m == leaf else where[(t, n)]  # noqa: E731
                                         for i, (t, n, m) in enumerate(zip(trees, attrs[key], modes))], dtype=torch.long)
        self.register_buffer("feature", torch.tensor(list(attrs["nodes_featureids"]), dtype=torch.long))
        self.register_buffer("threshold", torch.tensor(list(attrs["nodes_values"]), dtype=torch.float32))
        self.register_buffer("mode", torch.tensor(modes, dtype=torch.long))
        self.register_buffer("if_true", link("nodes_truenodeids"))
        self.register_buffer("if_false", link("nodes_falsenodeids"))
        missing = list(attrs.get("nodes_missing_value_tracks_true", [])) or [0] * len(trees)
        self.register_buffer("missing_true", torch.tensor(missing, dtype=torch.bool))
        children = {int(c) for key in ("if_true", "if_false") for i, c in enumerate(getattr(self, key).tolist())
                    if modes[i] != leaf}
        roots = {}
        for i, t in enumerate(trees):
            if i not in children:
                roots.setdefault(t, i)
        self.register_buffer("roots", torch.tensor(list(roots.values()), dtype=torch.long))
        self.depth = self._depth(modes, leaf)
        from onnx_attr.importing.budget import current_budget

        # a level is one step of every forward: a degenerate tree as deep as it has nodes would loop for minutes
        current_budget().check("max_loop_iterations", self.depth, "a tree ensemble's depth (levels walked per call)")
        interior = {m for m in modes if m != leaf}
        self.single_mode = interior.pop() if len(interior) == 1 else None  # most ensembles compare one way
        outputs = (len(attrs.get("classlabels_int64s", []) or attrs.get("classlabels_strings", [])) if classifier
                   else int(attrs.get("n_targets", 1)))
        weight_ids = [int(c) for c in attrs[f"{prefix}_ids"]]
        if any(c < 0 for c in weight_ids):
            raise ValueError(f"a tree ensemble's {prefix}_ids has a negative id")
        columns = max([outputs, *[c + 1 for c in weight_ids]])
        # ids come from the file: a class id of 2^40 would ask for that many columns per node
        current_budget().check("max_elements", len(trees) * columns, "a tree ensemble's leaf weights")
        weights = torch.zeros(len(trees), columns, dtype=torch.float64)
        rows = torch.tensor([where[(t, n)] for t, n in zip(attrs[f"{prefix}_treeids"], attrs[f"{prefix}_nodeids"])],
                            dtype=torch.long)
        weights.index_put_((rows, torch.tensor(weight_ids, dtype=torch.long)),
                           torch.tensor(list(attrs[f"{prefix}_weights"]), dtype=torch.float64), accumulate=True)
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
        self.binary = classifier and outputs == 2 and len(set(weight_ids)) == 1
        self.binary_column = weight_ids[0] if weight_ids else 0  # the one class the weights score
        self.positive = bool((torch.tensor(list(attrs[f"{prefix}_weights"]) or [0.0]) >= 0).all())
        labels = attrs.get("classlabels_int64s")
        self.register_buffer("labels", torch.tensor(list(labels), dtype=torch.int64) if labels else None)

    def _depth(self, modes: list, leaf: int) -> int:
        """Levels of the deepest tree: each node's height once (a depth-first walk, no recursion); a
        node reached again while it is on the walk's path is a cycle, refused."""
        true, false = self.if_true.tolist(), self.if_false.tolist()
        height: dict[int, int] = {}
        for root in self.roots.tolist():
            stack, on_path = [root], set()
            while stack:
                node = stack[-1]
                if node in height:
                    stack.pop()
                    continue
                children = [] if modes[node] == leaf else list({true[node], false[node]})
                pending = [c for c in children if c not in height]
                if not pending:
                    height[node] = 1 + max((height[c] for c in children), default=-1)
                    on_path.discard(node)
                    stack.pop()
                    continue
                if node in on_path or any(c in on_path for c in pending):
                    raise ValueError("a tree of the ensemble loops back on itself")
                on_path.add(node)
                stack.extend(pending)
        return max((height[r] for r in self.roots.tolist()), default=0)

    def forward(self, x: torch.Tensor):
        rows = x.reshape(1, -1) if x.dim() == 1 else x.reshape(x.shape[0], -1)
        rows = rows.to(torch.float32) if not rows.is_floating_point() else rows
        node = self.roots.expand(rows.shape[0], -1)
        for _ in range(self.depth):
            value = rows.gather(1, self.feature[node])
            threshold, mode = self.threshold[node].to(rows.dtype), self.mode[node]
            go_true = _COMPARISONS[self.single_mode](value, threshold) if self.single_mode is not None else \
                torch.stack([compare(value, threshold) for compare in _COMPARISONS], -1).gather(
                    -1, mode.clamp(max=5).unsqueeze(-1)).squeeze(-1)
            go_true = torch.where(torch.isnan(value), self.missing_true[node], go_true)
            step = torch.where(go_true, self.if_true[node], self.if_false[node])
            node = torch.where(mode == _MODES["LEAF"], node, step)
        scores = self.weights[node].sum(1)
        if self.aggregate == "AVERAGE":
            scores = scores / self.roots.numel()
        scores = scores + self.base
        if self.binary:
            return self._binary(scores)
        scores = scores[:, :self.outputs] if self.classifier else scores
        if self.transform == "LOGISTIC":
            scores = torch.sigmoid(scores)
        elif self.transform == "SOFTMAX":
            scores = torch.softmax(scores, -1)
        scores = scores.to(torch.float32)
        if not self.classifier:
            return scores
        index = scores.argmax(-1)
        return (index if self.labels is None else self.labels[index]), scores

    def _binary(self, scores: torch.Tensor):
        """One score s for two classes: [1 - s, s] (probabilities, all weights positive) or [-s, s]
        (margins), through the post_transform; the label is class 1 where its score wins."""
        s = scores[:, self.binary_column:self.binary_column + 1]
        if self.transform == "LOGISTIC":
            p = torch.sigmoid(s)
            pair = torch.cat([1 - p, p], 1)
            won = p > 0.5
        elif self.transform == "SOFTMAX":
            pair = torch.softmax(torch.cat([-s, s], 1), 1)
            won = s > 0
        elif self.positive:
            pair, won = torch.cat([1 - s, s], 1), s > 0.5
        else:
            pair, won = torch.cat([-s, s], 1), s > 0
        index = won.squeeze(1).long()
        return (index if self.labels is None else self.labels[index]), pair.to(torch.float32)


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


_V5_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ")


def tree_ensemble_5(attrs: dict) -> dict:
    """ai.onnx.ml TreeEnsemble-5 (nodes and leaves apart, roots listed, enums as ints) as the
    TreeEnsembleRegressor attributes `TreeEnsemble` reads: leaves become LEAF nodes after the
    interior ones, each node given the tree whose root reaches it."""
    features = _listed(attrs.get("nodes_featureids"))
    n, weights = len(features), _listed(attrs.get("leaf_weights"))
    modes = [int(m) for m in _listed(attrs.get("nodes_modes"))]
    if any(m >= len(_V5_MODES) for m in modes):
        raise NotImplementedError("TreeEnsemble nodes of mode BRANCH_MEMBER (set membership)")

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
            "nodes_featureids": features + [0] * len(weights), "nodes_values": _listed(attrs.get("nodes_splits")) + [0.0] * len(weights),
            "nodes_modes": [_V5_MODES[m] for m in modes] + ["LEAF"] * len(weights),
            "nodes_truenodeids": true + [0] * len(weights), "nodes_falsenodeids": false + [0] * len(weights),
            "nodes_missing_value_tracks_true": list(missing) + [0] * len(weights),
            "target_treeids": [tree_of.get(n + j, 0) for j in range(len(weights))],
            "target_nodeids": [n + j for j in range(len(weights))], "target_ids": _listed(attrs.get("leaf_targetids")),
            "target_weights": weights, "n_targets": int(attrs.get("n_targets", 1)), "aggregate_function": aggregate,
            "post_transform": transform}


class TreeEnsemble5(TreeEnsemble):
    """TreeEnsemble-5: the regressor's walk; its output has the input's floating type."""

    def forward(self, x: torch.Tensor):
        out = super().forward(x)
        return out.to(x.dtype) if x.is_floating_point() else out


@register("TreeEnsemble", 5, domain="ai.onnx.ml")
def convert_tree_ensemble_5(node, graph):
    return result(node, TreeEnsemble5(tree_ensemble_5(dict(node.attributes)), classifier=False))
