"""Shapley values of features: exactly over every subset (ShapleyValues) or estimated from random
feature orders (ShapleyValueSampling), both on `MaskedEvaluator`.

A feature is a group of elements sharing an id in `feature_mask` (the same id in two inputs is
one feature, as in Captum); by default every element is its own feature. A feature absent from a
coalition is set to its baseline. Each element gets its feature's value.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from onnx_attr.errors import InputError
from onnx_attr.methods.masked_eval import feature_ids, spread
from onnx_attr.methods.perturbation import _attribution_dtype, _by_name, _Perturbation

#: ShapleyValues evaluates 2**F coalitions; above this many features it refuses (65,536 forward
#: copies of the batch at 16) and names ShapleyValueSampling or a coarser feature_mask instead.
MAX_EXACT_FEATURES = 16


def check_samples(n_samples: Any) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise InputError(f"n_samples must be a positive int, got {n_samples!r}")
    return int(n_samples)


class _FeatureValues(_Perturbation):
    """Per-feature values [N, K, F] computed from coalitions (K values per example), spread onto
    every attributed input."""

    every_value = "nested"

    def _attribute(self, inputs: Any, baselines: Any, target: Any, additional_forward_args: Any, feature_mask: Any,
                   perturbations_per_eval: int, show_progress: bool, output: Union[str, int, None], **options: Any):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        groups, features = feature_ids(feature_mask, prepared, _by_name)
        index = self._output_index(output)
        targets = self._targets(target, n, prepared, index)
        evaluator = self._evaluator(prepared, targets, index, perturbations_per_eval)
        phi, reference = self._feature_values(evaluator, groups, features, show_progress, **options)  # [N, K, F]
        attributions = [None if g is None else spread(phi, g, n).to(_attribution_dtype(x, reference))
                        for x, g in zip(prepared.tensors, groups)]
        return self._shaped(prepared, attributions, reference)


class ShapleyValueSampling(_FeatureValues):
    """Shapley values estimated from `n_samples` random feature orders (Štrumbelj & Kononenko):
    features join one at a time from the baseline, each credited with the output change it makes.

    Orders are drawn with `torch.randperm`, one per sample in turn, as Captum draws them, so under
    the same torch seed the two see the same orders.
    """

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  feature_mask: Any = None, n_samples: int = 25, perturbations_per_eval: int = 1,
                  show_progress: bool = False, *, output: Union[str, int, None] = None):
        return self._attribute(inputs, baselines, target, additional_forward_args, feature_mask,
                               perturbations_per_eval, show_progress, output, n_samples=check_samples(n_samples))

    def _feature_values(self, evaluator, groups, features: int, show_progress: bool, n_samples: int):
        orders = torch.stack([torch.randperm(features) for _ in range(n_samples)])  # [S, F]
        ranks = torch.empty_like(orders)
        ranks.scatter_(1, orders, torch.arange(features).expand(n_samples, features))
        bar = self._bar(evaluator, [n_samples * features], show_progress, extra=1)
        empty = evaluator.value(evaluator.baselines, evaluator.targets).double()  # no feature present
        bar.update(1)

        def patterns(start: int, stop: int) -> Tensor:
            rows = torch.arange(start, stop)
            return (ranks[rows // features] <= (rows % features).unsqueeze(1)).unsqueeze(1)

        values, _ = evaluator.evaluate_patterns(n_samples * features, patterns, groups)
        bar.close()
        n = evaluator.n
        k = values.shape[2]
        values = values.double().reshape(n_samples, features, n, k)
        before = torch.cat([empty.reshape(1, 1, n, k).expand(n_samples, 1, n, k), values[:, :-1]], 1)
        gains = (values - before).permute(2, 3, 0, 1).reshape(n, k, -1)  # [N, K, S*F], in the orders' sequence
        phi = torch.zeros(n, k, features, dtype=torch.float64).index_add_(2, orders.reshape(-1), gains)
        return phi / n_samples, empty


class ShapleyValues(_FeatureValues):
    """Exact Shapley values: φ_i = Σ_S |S|!(F−|S|−1)!/F! · (f(S ∪ i) − f(S)) over every coalition S
    of the other features, from the 2**F coalition values (Captum walks all F! orders for the same
    numbers). Refused above MAX_EXACT_FEATURES features."""

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  feature_mask: Any = None, perturbations_per_eval: int = 1, show_progress: bool = False, *,
                  output: Union[str, int, None] = None):
        return self._attribute(inputs, baselines, target, additional_forward_args, feature_mask,
                               perturbations_per_eval, show_progress, output)

    def _feature_values(self, evaluator, groups, features: int, show_progress: bool):
        if features > MAX_EXACT_FEATURES:
            raise InputError(f"ShapleyValues evaluates 2**F coalitions and there are {features} features (at most "
                             f"{MAX_EXACT_FEATURES}): group elements with a feature_mask, or use "
                             "ShapleyValueSampling (or KernelShap) to estimate them")
        count = 2 ** features
        bits = 1 << torch.arange(features)
        bar = self._bar(evaluator, [count], show_progress)
        values, _ = evaluator.evaluate_patterns(
            count, lambda start, stop: ((torch.arange(start, stop).unsqueeze(1) & bits) != 0).unsqueeze(1), groups)
        bar.close()
        values = values.double()  # [2**F, N, K], row = coalition code
        codes = np.arange(count)
        sizes = np.array([bin(c).count("1") for c in codes])
        weight = torch.tensor([math.factorial(s) * math.factorial(features - s - 1) / math.factorial(features)
                               if s < features else 0.0 for s in sizes], dtype=torch.float64)
        phi = torch.zeros(evaluator.n, values.shape[2], features, dtype=torch.float64)
        for i in range(features):
            without = torch.from_numpy(codes[(codes >> i) & 1 == 0])
            phi[:, :, i] = (weight[without].reshape(-1, 1, 1) * (values[without | (1 << i)] - values[without])).sum(0)
        return phi, values[0].reshape(evaluator.n, *evaluator.values_shape)  # the empty coalition's
