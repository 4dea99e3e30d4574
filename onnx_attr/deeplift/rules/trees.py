"""Tree ensembles: each feature's exact Shapley value of the trees between the input and the reference.

A tree ensemble is piecewise constant: no gradient, and no per-input secant makes a multi-input step
complete. But with one reference x0, its margins at the hybrid inputs (x on a set S of features, x0
on the rest) form a game over the features, and its Shapley values φ_f sum to f(x) − f(x0) exactly:
the rule's contributions, multiplier φ_f / Δx_f (the baseline Shapley values of Sundararajan &
Najmi 2020; shap's interventional TreeExplainer with a background of one row).

The game is a sum over leaves. A leaf is reached by the hybrid of S when, for each feature on its
path, every split on that feature is passed by x (the feature must be in S: set U) or by x0 (it must
not: set V), or by both (it does not matter). Its indicator is 1 exactly for U ⊆ S, V ∩ S = ∅, whose
Shapley values have a closed form: v·(a−1)!·b!/(a+b)! to each of U's a features, −v·a!·(b−1)!/(a+b)!
to each of V's b (Lundberg et al. 2020, interventional TreeSHAP). So one pass over every leaf's path,
for all rows at once, gives the values; the leaves the hybrids cannot reach contribute nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from onnx_attr.deeplift.differences import difference
from onnx_attr.deeplift.rules.base import DecomposedRule, _require_varying, rule
from onnx_attr.deeplift.rules.composite import exp_shifted, paired_logsumexp
from onnx_attr.deeplift.rules.paired import rescale
from onnx_attr.importing.budget import current_budget
from onnx_attr.importing.converters.ml import _MODES

#: (rows × leaves × path positions) per block of the evaluation: ~100 MB of temporaries at most
_BLOCK = 1 << 22


class LeafPaths:
    """Every root-to-leaf path of an ensemble, padded to the deepest: the interior nodes on it, the
    branch it takes at each, and each position's slot (the first position on the path splitting on
    the same feature: the positions of one feature share a slot). Beside them, the ensemble as a
    tree of node instances, one per path prefix (the nodes themselves, unless a malformed file
    shares a child between parents), whose leaf instances are the paths: the walk that finds the
    leaves a row's hybrids reach (`_reached`) follows it."""

    def __init__(self, ensemble):
        interior = (ensemble.mode != _MODES["LEAF"]).numpy()
        if_true, if_false = ensemble.if_true.numpy(), ensemble.if_false.numpy()
        budget = current_budget()
        # walked level by level from the roots, every path at once (a node two parents share, in a
        # malformed file, is a path through each: counted against the element budget as they grow)
        node = ensemble.roots.numpy().copy()
        nodes = np.zeros((len(node), 0), np.int64)
        sides = np.zeros((len(node), 0), bool)
        leaves, leaf_nodes, leaf_sides = [], [], []
        instance_node, instance_children, instance_path = [], [], []
        first, paths = 0, 0  # the level's first instance id; the paths found so far
        for _ in range(ensemble.depth + 1):
            done = ~interior[node]
            leaves.append(node[done])
            leaf_nodes.append(nodes[done])
            leaf_sides.append(sides[done])
            path = np.full(len(node), -1)
            path[done] = np.arange(paths, paths + int(done.sum()))
            paths += int(done.sum())
            children = np.full((len(node), 2), -1)
            after = first + len(node)
            children[~done] = after + np.arange(2 * int((~done).sum())).reshape(-1, 2)
            instance_node.append(node)
            instance_children.append(children)
            instance_path.append(path)
            first = after
            node, nodes, sides = node[~done], nodes[~done], sides[~done]
            if not len(node):
                break
            budget.check("max_elements", 2 * len(node) * (nodes.shape[1] + 1), "a tree ensemble's leaf paths")
            nodes = np.concatenate([np.repeat(nodes, 2, 0), np.repeat(node, 2)[:, None]], 1)
            sides = np.concatenate([np.repeat(sides, 2, 0), np.tile([True, False], len(node))[:, None]], 1)
            node = np.stack([if_true[node], if_false[node]], 1).reshape(-1)
        self.instance_node = torch.from_numpy(np.concatenate(instance_node))
        self.instance_children = torch.from_numpy(np.concatenate(instance_children))
        self.instance_path = torch.from_numpy(np.concatenate(instance_path))
        self.root_instances = torch.arange(len(ensemble.roots))
        depth = max(n.shape[1] for n in leaf_nodes)
        pad = lambda parts, value: np.concatenate(  # noqa: E731
            [np.pad(p, ((0, 0), (0, depth - p.shape[1])), constant_values=value) for p in parts])
        self.leaf = torch.from_numpy(np.concatenate(leaves))
        self.node = torch.from_numpy(pad(leaf_nodes, 0))
        self.side = torch.from_numpy(pad(leaf_sides, True))
        self.valid = torch.from_numpy(pad([np.ones(p.shape, bool) for p in leaf_nodes], False))
        features = torch.where(self.valid, ensemble.feature[self.node], -1)
        self.slot = _first_positions(features)
        # the feature each slot stands for (-1: a padding or a position whose feature came earlier)
        positions = torch.arange(depth).expand_as(self.slot)
        self.slot_feature = torch.where((self.slot == positions) & self.valid, features, -1)

    def __len__(self) -> int:
        return len(self.leaf)


def _first_positions(features: Tensor) -> Tensor:
    """Per row, each position's first position holding the same value (a stable sort, no D² compare)."""
    order = torch.sort(features, dim=1, stable=True).indices
    ordered = features.gather(1, order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    # each sorted position's group start, carried forward: the index of the last start at or before it
    at = torch.where(starts, torch.arange(ordered.shape[1]).expand_as(ordered), 0).cummax(1).values
    first = order.gather(1, at)  # stable: a group's start is its smallest original position
    return torch.empty_like(first).scatter_(1, order, first)


def _paths(ensemble) -> LeafPaths:
    """The ensemble's leaf paths, built once per converted module."""
    found = getattr(ensemble, "_leaf_paths", None)
    if found is None:
        found = ensemble._leaf_paths = LeafPaths(ensemble)
    return found


def shapley_values(ensemble, x: Tensor, x0: Tensor) -> Tensor:
    """[rows, features, columns] float64: each feature's baseline Shapley value of each margin column
    (before base_values and the post_transform, which it does not change: summed over the features it
    is margins(x) − margins(x0) for every row, as exactly as float64 sums)."""
    paths = _paths(ensemble)
    rows = ensemble.rows(x)
    rows0 = ensemble.rows(x0).expand_as(rows)
    n, features = rows.shape
    weights = ensemble.weights[paths.leaf]  # [leaves, columns]
    if ensemble.aggregate == "AVERAGE":
        weights = weights / ensemble.roots.numel()
    # every row's value per feature and class: a file's 10⁴ classes over 10⁴ features would be 10⁸ per row
    current_budget().check("max_elements", n * (features + 1) * weights.shape[1], "a tree ensemble's Shapley values")
    phi = torch.zeros(n, features + 1, weights.shape[1], dtype=torch.float64)  # the last: padding's sink
    depth = paths.node.shape[1]
    step = max(1, _BLOCK // max(1, len(paths)))  # rows whose reached paths fit a block even if all are
    for r in range(0, n, step):
        row, path = _reached(ensemble, paths, rows[r:r + step], rows0[r:r + step])
        for b in range(0, len(row), max(1, _BLOCK // depth)):
            at_row, at_path = row[b:b + _BLOCK // depth], path[b:b + _BLOCK // depth]
            node, side, valid, slot = (t[at_path] for t in (paths.node, paths.side, paths.valid, paths.slot))
            # per (row, path) and slot: does x (x0) pass every split of that feature on the path?
            by_x = _passes(ensemble.takes_true(rows[r:r + step], at_row, node) == side, valid, slot)
            by_x0 = _passes(ensemble.takes_true(rows0[r:r + step], at_row, node) == side, valid, slot)
            reached = (by_x | by_x0).all(-1, keepdim=True)
            only_x, only_x0 = by_x & ~by_x0 & reached, by_x0 & ~by_x & reached
            share_x, share_x0 = _shares(only_x.sum(-1, keepdim=True), only_x0.sum(-1, keepdim=True))
            coefficient = torch.where(only_x, share_x, 0.0) - torch.where(only_x0, share_x0, 0.0)
            pair, position = found = coefficient.nonzero(as_tuple=True)
            if not len(pair):
                continue
            feature = paths.slot_feature[at_path[pair], position]
            values = coefficient[found].unsqueeze(-1) * weights[at_path[pair]]
            phi.index_put_((at_row[pair] + r, torch.where(feature < 0, features, feature)), values, accumulate=True)
    return phi[:, :features]


def _reached(ensemble, paths: LeafPaths, rows: Tensor, rows0: Tensor) -> tuple[Tensor, Tensor]:
    """(row, path) for every path some hybrid of a row can take: walked from the roots, one child
    where x and x0 take the same branch, both where they part (a path splitting twice on one feature
    can still be inconsistent: the slots sort that out)."""
    instance = paths.root_instances.repeat(rows.shape[0])
    row = torch.arange(rows.shape[0]).repeat_interleave(len(paths.root_instances))
    found_rows, found_paths = [], []
    while len(instance):
        path = paths.instance_path[instance]
        leaf = path >= 0
        found_rows.append(row[leaf])
        found_paths.append(path[leaf])
        instance, row = instance[~leaf], row[~leaf]
        node = paths.instance_node[instance]
        goes, goes0 = ensemble.takes_true(rows, row, node), ensemble.takes_true(rows0, row, node)
        children = paths.instance_children[instance]
        chosen = children.gather(1, (~goes).long().unsqueeze(1)).squeeze(1)
        parted = goes != goes0
        instance = torch.cat([chosen[~parted], children[parted].reshape(-1)])
        row = torch.cat([row[~parted], row[parted].repeat_interleave(2)])
    return torch.cat(found_rows), torch.cat(found_paths)


def _passes(passed: Tensor, valid: Tensor, slot: Tensor) -> Tensor:
    """[..., slots]: whether every (valid) split of a slot's feature on the path is passed."""
    failed = (~passed & valid).to(torch.int16)
    return torch.zeros_like(failed).scatter_add_(-1, slot.expand_as(failed), failed) == 0


def _shares(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The closed-form Shapley weights of the game [U ⊆ S and V ∩ S = ∅], |U| = a, |V| = b:
    (a−1)!·b!/(a+b)! for a member of U, a!·(b−1)!/(a+b)! for one of V (0 where the set is empty)."""
    a, b = a.double(), b.double()
    total = torch.lgamma(a + b + 1)
    share_x = torch.where(a > 0, torch.exp(torch.lgamma(a.clamp(min=1)) + torch.lgamma(b + 1) - total), 0.0)
    share_x0 = torch.where(b > 0, torch.exp(torch.lgamma(a + 1) + torch.lgamma(b.clamp(min=1)) - total), 0.0)
    return share_x, share_x0


class _ShapleyMargins(torch.autograd.Function):
    """The margins at x, whose backward is the Shapley values over Δx: Σ_f m_f·Δx_f = Δmargin."""

    @staticmethod
    def forward(ctx, x: Tensor, x0: Tensor, ensemble) -> Tensor:
        ctx.save_for_backward(x, x0)
        ctx.ensemble = ensemble
        return ensemble.margins(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, x0 = ctx.saved_tensors
        phi = shapley_values(ctx.ensemble, x, x0)  # [rows, features, columns]
        rows, rows0 = ctx.ensemble.rows(x).double(), ctx.ensemble.rows(x0).double()
        delta = difference(rows, rows0)  # 1 for a missing value (NaN at x): its multiplier is its value
        # a feature equal at x and x0 never changes a branch: its value is 0, and so its multiplier
        found = torch.einsum("nfc,nc->nf", phi, grad.double())
        multiplier = torch.where(delta != 0, found / torch.where(delta != 0, delta, 1.0), 0.0)
        return multiplier.reshape(x.shape).to(x.dtype), None, None


@rule("TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble")
class TreeEnsembleRule(DecomposedRule):
    """The trees' Shapley values (above), then the post_transform by its own rules: a sigmoid by
    rescale, a softmax by its decomposition (composite.Softmax)."""

    def check(self, info) -> None:
        _require_varying(info, 1, "is not a tree ensemble of its features alone")

    def decompose(self, info, call, args, refs):
        ensemble = call.module
        x, x0 = args[0], refs[0]
        z = _ShapleyMargins.apply(x, x0.detach(), ensemble)
        with torch.no_grad():
            z0 = ensemble.margins(x0)
        # the input side goes through the paired transform, whose reference operand is the same
        # slice of z0 (the pair [-s0, s0] for a binary softmax); the reference side through the plain one
        if ensemble.binary:
            s0 = z0[:, ensemble.binary_column:ensemble.binary_column + 1]
            operand0 = torch.cat([-s0, s0], 1) if ensemble.transform == "SOFTMAX" else s0
        else:
            operand0 = z0[:, :ensemble.outputs] if ensemble.classifier else z0

        def sigmoid(s):
            return rescale(torch.sigmoid, s, operand0)[0]

        def softmax(s):
            lse, lse0 = paired_logsumexp(s, operand0, (-1,))
            return exp_shifted(s, operand0, lse, lse0)[0]

        dtype = ensemble.output_dtype(x)
        return ensemble.transformed(z, dtype, sigmoid=sigmoid, softmax=softmax), ensemble.transformed(z0, dtype)

    def backward(self, info, call, grad, args, out, refs, ref_out):
        if isinstance(grad, tuple):  # a classifier's (label, scores): the label is an integer
            grad = grad[-1]
        if grad is None:
            return [torch.zeros_like(args[0])]
        return super().backward(info, call, grad, args, out, refs, ref_out)
