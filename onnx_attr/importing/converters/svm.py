"""ai.onnx.ml SVMClassifier and SVMRegressor (scikit-learn's SVC, NuSVC, SVR, NuSVR, OneClassSVM
as skl2onnx writes them), as expansions into the ops they compute, with onnxruntime's formulas.

The kernel against the support vectors is its ONNX steps (Gemm, then Mul/Add, Pow or Tanh), the
RBF kernel one `SquaredDistance` step (Σ_f (x_f − sv_f)², one row of the input against every
support vector, in row chunks so no [rows, vectors, features] tensor is held) followed by Mul and
Exp. Its DeepLift rule is exact and closed form (rules/distance.py). The pairwise decision values
are one Gemm of the kernels, so every step has the rule of the op it is. libsvm's probability
estimates (prob_a, prob_b) couple the pairwise probabilities by an iterative solve: for two
classes its answer is a sigmoid of the decision value, which `final_activation` strips; for more,
DeepLift refuses the coupling by name and the perturbation methods explain it.
"""

from __future__ import annotations

import torch
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.activations import Elementwise
from onnx_attr.importing.converters.ml import _Affine, _Constant, _declared_features, _Labels, _post_transform
from onnx_attr.importing.converters.registry import register

#: rows × support vectors × features held at once by `SquaredDistance`'s forward
_CHUNK_ELEMENTS = 1 << 24


class SquaredDistance(nn.Module):
    """‖x − sv‖² of each row of x [N, F] against each support vector [S, F]: [N, S]."""

    def __init__(self, support: torch.Tensor):
        super().__init__()
        self.register_buffer("support", support)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        support = self.support.to(x.dtype)
        rows = max(1, _CHUNK_ELEMENTS // max(1, support.numel()))
        return torch.cat([((part.unsqueeze(1) - support) ** 2).sum(-1) for part in x.split(rows)]) \
            if x.shape[0] else x.new_zeros(0, support.shape[0])


class _Rows(nn.Module):
    """The input as [rows, features] float32, as onnxruntime reads it (a 1-D input is one row)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, -1).float() if x.dim() == 1 else x.reshape(x.shape[0], -1).float()


class _Votes(nn.Module):
    """libsvm's one-against-one vote: pair (i, j) votes i where its decision value is > 0, else j;
    the label is the class with the most votes (the first of equals)."""

    def __init__(self, classes: int, labels: torch.Tensor | None):
        super().__init__()
        self.pairs = [(i, j) for i in range(classes - 1) for j in range(i + 1, classes)]
        self.classes = classes
        self.register_buffer("labels", labels)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        votes = scores.new_zeros(scores.shape[0], self.classes, dtype=torch.int64)
        for k, (i, j) in enumerate(self.pairs):
            won = scores[:, k] > 0
            votes[:, i] += won
            votes[:, j] += ~won
        index = votes.argmax(-1)  # torch's argmax gives the first of equal maxima, as std::max_element
        return index if self.labels is None else self.labels[index]


class _Negated(nn.Module):
    """[−s, s] (onnxruntime's two-class scores with no post_transform, or LOGISTIC's before it) or [1 − s, s]
    (under SOFTMAX and SOFTMAX_ZERO)."""

    def __init__(self, complement: bool):
        super().__init__()
        self.complement = complement

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.cat([(1 - s) if self.complement else -s, s], -1)


class PairwiseCoupling(nn.Module):
    """libsvm's (and onnxruntime's) multiclass probabilities from the pairwise ones r_ij (i < j, in
    pair order): the fixed-point iteration of Wu, Lin and Weng's second method, at most 100 sweeps,
    each row stopping where its error falls below 0.005 / classes, in float32 and in onnxruntime's
    order of operations (its stopping test decides the answer's last digits)."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, pairwise: torch.Tensor) -> torch.Tensor:
        c, n = self.classes, pairwise.shape[0]
        r = [[None] * c for _ in range(c)]
        k = 0
        for i in range(c - 1):
            for j in range(i + 1, c):
                r[i][j], r[j][i] = pairwise[:, k], 1 - pairwise[:, k]
                k += 1
        q = [[None] * c for _ in range(c)]
        for i in range(c):
            diagonal = pairwise.new_zeros(n)
            for j in range(c):
                if j != i:
                    diagonal = diagonal + r[j][i] * r[j][i]
                    q[i][j] = -r[j][i] * r[i][j]
            q[i][i] = diagonal
        p = [pairwise.new_full((n,), 1.0 / c) for _ in range(c)]
        active = torch.ones(n, dtype=torch.bool, device=pairwise.device)
        eps = 0.005 / c
        for _ in range(100):
            qp = []
            pqp = pairwise.new_zeros(n)
            for i in range(c):
                total = pairwise.new_zeros(n)
                for j in range(c):
                    total = total + q[i][j] * p[j]
                qp.append(total)
                pqp = pqp + p[i] * total
            error = torch.stack([(v - pqp).abs() for v in qp]).amax(0)
            active = active & ~(error < eps)
            if not bool(active.any()):
                break
            for i in range(c):
                diff = (-qp[i] + pqp) / q[i][i]
                p[i] = torch.where(active, p[i] + diff, p[i])
                pqp = torch.where(active, (pqp + diff * (diff * q[i][i] + 2 * qp[i])) / (1 + diff) / (1 + diff), pqp)
                for j in range(c):
                    qp[j] = torch.where(active, (qp[j] + diff * q[i][j]) / (1 + diff), qp[j])
                    p[j] = torch.where(active, p[j] / (1 + diff), p[j])
        return torch.stack(p, -1)


def _floats(node, name: str) -> list[float]:
    return [float(v) for v in node.attributes.get(name, [])]


def _kernel(node, e, x, vectors: torch.Tensor):
    """K(x, each of `vectors`) [N, S] as onnxruntime's `batched_kernel_dot` computes it."""
    kind = text_attribute(node, "kernel_type", "LINEAR")
    params = _floats(node, "kernel_params") + [0.0, 0.0, 0.0]
    gamma, coef0, degree = params[:3]
    if kind == "RBF":
        distance = e.step("SquaredDistance", SquaredDistance(vectors), x)
        distance.meta["onnx_domain"] = "onnx_attr.fused"  # our own op, with its own rule (rules/distance.py)
        scaled = e.step("Mul", _Constant("Mul", torch.tensor(-gamma)), distance)
        return e.step("Exp", Elementwise(torch.exp), scaled)
    dot = e.step("Gemm", _Affine(vectors, torch.zeros(vectors.shape[0])), x, attrs={"transB": 1})
    if kind == "LINEAR":
        return dot
    if kind not in ("POLY", "SIGMOID"):
        raise NotImplementedError(f"{node.operation_type} kernel_type {kind!r} (LINEAR, POLY, RBF or SIGMOID)")
    shifted = e.step("Sub", _Constant("Sub", torch.tensor(-coef0)),
                     e.step("Mul", _Constant("Mul", torch.tensor(gamma)), dot))
    if kind == "SIGMOID":
        return e.step("Tanh", Elementwise(torch.tanh), shifted)
    return e.step("Pow", Elementwise(torch.pow, exponent=degree), shifted)


def _support(node, graph, vector_count: int) -> torch.Tensor:
    support = torch.tensor(_floats(node, "support_vectors"), dtype=torch.float32)
    if vector_count <= 0 or support.numel() % vector_count:
        raise ValueError(f"{node.operation_type} has {support.numel()} support-vector values for {vector_count} vectors")
    support = support.reshape(vector_count, -1)
    features = _declared_features(graph, node.input_values[0])
    if features is not None and features != support.shape[1]:
        raise ValueError(f"{node.operation_type}'s support vectors have {support.shape[1]} features, its input "
                         f"{features}")
    return support


def _pairwise_weights(coefficients: torch.Tensor, per_class: list[int]) -> torch.Tensor:
    """The one-against-one decision values as one matrix over the kernels: pair (i, j) weighs class
    i's vectors by coefficient row j − 1 and class j's by row i (libsvm's layout)."""
    classes, count = len(per_class), sum(per_class)
    if coefficients.numel() < (classes - 1) * count:
        raise ValueError(f"SVMClassifier has {coefficients.numel()} coefficients for {classes} classes and "
                         f"{count} support vectors (needs {(classes - 1) * count})")
    rows = coefficients[:(classes - 1) * count].reshape(classes - 1, count)
    start = [sum(per_class[:i]) for i in range(classes)]
    weights = torch.zeros(classes * (classes - 1) // 2, count)
    k = 0
    for i in range(classes - 1):
        for j in range(i + 1, classes):
            weights[k, start[i]:start[i] + per_class[i]] = rows[j - 1, start[i]:start[i] + per_class[i]]
            weights[k, start[j]:start[j] + per_class[j]] = rows[i, start[j]:start[j] + per_class[j]]
            k += 1
    return weights


@register("SVMClassifier", 1, domain="ai.onnx.ml")
def convert_svm_classifier(node, graph):
    """Y = the voted (or, with no support vectors, the highest-scoring) label, Z = the scores as
    onnxruntime writes them: pairwise decision values, [−s, s] for two classes, or probabilities."""
    from onnx_attr.importing.budget import current_budget
    from onnx_attr.importing.converters.microsoft import Expansion

    ints, strings = node.attributes.get("classlabels_ints"), node.attributes.get("classlabels_strings")
    classes = len(ints) if ints is not None else len(strings or [])
    if classes < 2:
        raise ValueError("SVMClassifier needs at least two class labels")
    # the coupling and the votes loop over pairs of classes, the file says how many
    current_budget().check("max_loop_iterations", classes * classes, "SVMClassifier's pairs of classes")
    labels = torch.tensor(list(ints), dtype=torch.int64) if ints is not None else None
    per_class = [int(v) for v in node.attributes.get("vectors_per_class", [])]
    coefficients = torch.tensor(_floats(node, "coefficients"), dtype=torch.float32)
    rho = torch.tensor(_floats(node, "rho"), dtype=torch.float32)
    prob_a, prob_b = _floats(node, "prob_a"), _floats(node, "prob_b")
    transform = text_attribute(node, "post_transform", "NONE")
    pairs = classes * (classes - 1) // 2
    e = Expansion(1)
    x = e.step("Cast", _Rows(), e.inputs[0], attrs={"to": 1})
    if sum(per_class) == 0:  # liblinear: one row of coefficients per class, all offset by rho[0]
        if prob_a or coefficients.numel() % classes or not rho.numel():
            raise NotImplementedError("SVMClassifier without support vectors but with probabilities or "
                                      f"{coefficients.numel()} coefficients for {classes} classes")
        weight = coefficients.reshape(classes, -1)
        scores = e.step("Gemm", _Affine(weight, rho[:1].expand(classes).clone()), x, attrs={"transB": 1})
        if classes == 2:
            raise NotImplementedError("SVMClassifier of two classes without support vectors (onnxruntime labels it "
                                      "by the sign of its weights)")
        label = e.step("ArgMax", _Labels(labels), scores, attrs={"axis": -1, "keepdims": 0})
        return result(node, e.build((label, _post_transform(node, e, scores))))
    if len(per_class) != classes or rho.numel() < pairs or (prob_a and (len(prob_a) < pairs or len(prob_b) < pairs)):
        raise ValueError(f"SVMClassifier's vectors_per_class, rho or prob_a/prob_b do not match its {classes} classes")
    kernels = _kernel(node, e, x, _support(node, graph, sum(per_class)))
    decision = e.step("Gemm", _Affine(_pairwise_weights(coefficients, per_class), rho[:pairs]), kernels,
                      attrs={"transB": 1})
    label = e.step("ArgMax", _Votes(classes, labels), decision, attrs={"axis": -1, "keepdims": 0})
    if prob_a:
        # r_ij = 1 − logistic(s·A + B) = logistic(−s·A − B), kept inside [1e-7, 1 − 1e-7]
        logit = e.step("Sub", _Constant("Sub", torch.tensor(prob_b[:pairs])),
                       e.step("Mul", _Constant("Mul", -torch.tensor(prob_a[:pairs])), decision))
        pairwise = e.step("Clip", Elementwise(torch.clamp, min=1e-7, max=1 - 1e-7),
                          e.step("Sigmoid", nn.Sigmoid(), logit))
        scores = _post_transform(node, e, e.step("SVMProbabilityCoupling", PairwiseCoupling(classes), pairwise))
    elif classes == 2:
        if transform == "PROBIT":
            raise NotImplementedError("SVMClassifier of two classes with post_transform 'PROBIT'")
        # [-s, s]; under LOGISTIC their logistic; under the softmaxes onnxruntime writes [1 - s, s] (checked against it)
        scores = e.step("Concat", _Negated(complement=transform not in ("NONE", "LOGISTIC")), decision,
                        attrs={"axis": -1})
        if transform == "LOGISTIC":
            scores = e.step("Sigmoid", nn.Sigmoid(), scores)
    else:
        scores = _post_transform(node, e, decision)
    return result(node, e.build((label, scores)))


class _OneClass(nn.Module):
    """1 where the decision value is > 0, else −1 (a step: DeepLift's secant is its exact jump)."""

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.where(s > 0, 1.0, -1.0).to(s.dtype)


@register("SVMRegressor", 1, domain="ai.onnx.ml")
def convert_svm_regressor(node, graph):
    """Σ_v coefficient_v · K(x, sv_v) + rho[0] as [N, 1] (x · coefficients + rho[0] with no support
    vectors); one_class gives its sign as ±1. onnxruntime ignores post_transform here, and so do we."""
    from onnx_attr.importing.converters.microsoft import Expansion

    count = int(node.attributes.get("n_supports", 0))
    coefficients = torch.tensor(_floats(node, "coefficients"), dtype=torch.float32)
    rho = torch.tensor(_floats(node, "rho")[:1] or [0.0], dtype=torch.float32)
    e = Expansion(1)
    x = e.step("Cast", _Rows(), e.inputs[0], attrs={"to": 1})
    if count > 0:
        if coefficients.numel() < count:
            raise ValueError(f"SVMRegressor has {coefficients.numel()} coefficients for {count} support vectors")
        kernels = _kernel(node, e, x, _support(node, graph, count))
        value = e.step("Gemm", _Affine(coefficients[:count].reshape(1, count), rho), kernels, attrs={"transB": 1})
    else:
        value = e.step("Gemm", _Affine(coefficients.reshape(1, -1), rho), x, attrs={"transB": 1})
    if int(node.attributes.get("one_class", 0)):
        value = e.step("Sign", _OneClass(), value)
    return result(node, e.build(value))
