"""Surrogate-model attributions: Lime and KernelShap, a weighted linear model fitted per example
to the outputs of random feature coalitions (evaluated by `MaskedEvaluator`).

Both follow Captum's defaults and draw as Captum draws with torch's generator, so under the same
torch seed every example of a batch sees Captum's coalitions (what Captum's fit takes from the
generator between examples is taken too: `_example_draws`):
- Lime: coalitions of independent fair coins, weights exp(−d²/2w²) with d the cosine distance
  (or Euclidean) between the example and its perturbed copy, a Lasso with α = 0.01;
- KernelShap: the all-present and all-absent coalitions first (weight 1e6), then a size k drawn
  with p(k) ∝ (F−1)/(k(F−k)) and k features at random (weight 1), least squares: the Shapley
  kernel, so the fit approaches the Shapley values.
The linear models are solved here (numpy least squares, coordinate descent for the Lasso), with
scikit-learn's objective and intercept, not with scikit-learn.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from onnx_attr.errors import InputError
from onnx_attr.methods.masked_eval import feature_ids, spread
from onnx_attr.methods.perturbation import _attribution_dtype, _by_name, _Perturbation
from onnx_attr.methods.shapley import check_samples

DISTANCES = ("cosine", "euclidean")


_ENTERING = 4  # features let into the active set per round, the most pulled first: a small support
# keeps the feature-sign solve exact (a large one is singular, and coordinate descent crawls there)


def weighted_linear_fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float = 0.0,
                        tol: float = 1e-10, max_iter: int = 100_000) -> np.ndarray:
    """Coefficients of y ≈ b + x·β (intercept fitted, not returned) minimising
    Σ wᵢ(yᵢ − b − xᵢ·β)² / (2 Σ w) + α‖β‖₁: scikit-learn's Lasso with `sample_weight` (its
    LinearRegression when α = 0, the minimum-norm solution when the samples do not fix β)."""
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (x, y, weights))
    # the intercept takes any shift: y from its first value, so that a y that never moves is exact
    # zeros (its weighted mean rounds off it, and least squares fitted that rounding: 1e-32 noise
    # that no "every attribution is 0" check would call zero)
    y = y - y[:1]
    w = w / w.sum()
    root = np.sqrt(w)[:, None]
    xs = (x - w @ x) * root
    ys = (y - w @ y) * root[:, 0]
    if alpha == 0:
        return np.linalg.lstsq(xs, ys, rcond=None)[0]
    beta = np.zeros(x.shape[1])
    norms = (xs * xs).sum(0)
    residual = ys.copy()
    # Coordinate descent over the active features only, the others checked at once between rounds
    # (a Python sweep over every feature took 80 s at 1,000 features), and the exact solution on the
    # support solved for as soon as the signs settle (coordinate descent alone crawls there when the
    # samples barely outnumber the support). A round ends when no feature outside moves.
    live = norms > 0
    sweeps = 0
    while sweeps < max_iter:
        pull = np.where(live & (beta == 0), np.abs(xs.T @ residual), 0.0)
        outside = np.flatnonzero(pull > alpha * (1 + 1e-10))
        if not len(outside):
            break
        entering = outside[np.argsort(-pull[outside], kind="stable")[:_ENTERING]]
        active = np.union1d(np.flatnonzero(beta), entering)
        while sweeps < max_iter:
            sweeps += 1
            largest = 0.0
            for j in active:
                rho = xs[:, j] @ residual + norms[j] * beta[j]
                new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / norms[j]
                if new != beta[j]:
                    residual -= xs[:, j] * (new - beta[j])
                    largest = max(largest, abs(new - beta[j]))
                    beta[j] = new
            if largest <= tol * max(1.0, np.abs(beta).max()):
                break
            settled = _settle_support(xs, ys, alpha, beta)
            support = np.flatnonzero(beta)
            residual = ys - xs[:, support] @ beta[support]
            if settled:
                break
    return beta


def _settle_support(xs: np.ndarray, ys: np.ndarray, alpha: float, beta: np.ndarray) -> bool:
    """Feature-sign steps (Lee et al., 2007) on `beta`'s support, which end at the exact minimiser
    over it. With the current signs that minimiser solves Xₛᵀ Xₛ βₛ = Xₛᵀ y − α sign(βₛ); where it
    flips a sign, step towards it only as far as the first coefficient reaching zero (the objective
    falls all the way) and drop that one. Where Xₛ has more columns than rank (the fit is then the
    same along a null direction), move along that direction, the way the L1 norm falls, until one
    reaches zero. True at the minimiser; False when the steps run out (beta may have moved), and
    coordinate descent goes on. Whether a feature outside should enter is the caller's check."""
    for _ in range(np.count_nonzero(beta) + 1):
        support = np.flatnonzero(beta)
        if not len(support):
            return False
        xa, signs, current = xs[:, support], np.sign(beta[support]), beta[support]
        _, values, rows = np.linalg.svd(xa, full_matrices=True)
        rank = int((values > 1e-10 * values[0]).sum()) if len(values) and values[0] > 0 else 0
        if rank < len(support):
            way = rows[rank] if signs @ rows[rank] <= 0 else -rows[rank]
            reach = np.where(current * way < 0, -current / np.where(way == 0, 1.0, way), np.inf)
        else:
            gram, rhs = xa.T @ xa, xa.T @ ys - alpha * signs
            solved = np.linalg.solve(gram, rhs)
            flips = np.sign(solved) != signs
            if not flips.any():
                beta[support] = solved
                return True
            way = solved - current
            reach = np.full(len(support), np.inf)
            reach[flips] = current[flips] / (current[flips] - solved[flips])  # in (0, 1]: where each one hits 0
        first = int(np.argmin(reach))
        if not np.isfinite(reach[first]):
            return False
        step = current + reach[first] * way
        step[first] = 0.0
        beta[support] = step
    return False


class _Surrogate(_Perturbation):
    """A linear model per example over binary coalitions of features; its coefficients are the
    attributions (spread onto the elements), or returned per feature with return_input_shape=False."""

    _multiply_by_inputs = False  # Captum's flag for Lime and KernelShap
    every_value = None  # one linear fit per example's value: Captum refuses several values too

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  feature_mask: Any = None, n_samples: int = 25, perturbations_per_eval: int = 1,
                  return_input_shape: bool = True, show_progress: bool = False, *,
                  output: Union[str, int, None] = None):
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        groups, features = feature_ids(feature_mask, prepared, _by_name)
        groups, features = _from_zero(groups, features)
        samples = check_samples(n_samples)
        draws = torch.stack([self._example_draws(features, samples) for _ in range(n)], 1)
        index = self._output_index(output)
        targets = self._targets(target, n, prepared, index)
        evaluator = self._evaluator(prepared, targets, index, perturbations_per_eval)
        bar = self._bar(evaluator, [samples], show_progress)
        values, measured = evaluator.evaluate_patterns(samples, lambda start, stop: draws[start:stop], groups,
                                                       self._measure(prepared, n, draws))
        bar.close()
        values = values[..., 0]  # one value per example: every_value is None here
        weights = self._weights(draws, measured, features)  # [S, N]
        x, y, w = draws.double().numpy(), values.double().cpu().numpy(), weights.double().cpu().numpy()
        coefs = torch.from_numpy(np.stack([self._fit(x[:, e], y[:, e], w[:, e]) for e in range(n)]))
        if not return_input_shape:
            first = next(t for t, a in zip(prepared.tensors, prepared.attributed) if a)
            coefs = coefs.to(_attribution_dtype(first, values))
            return coefs.numpy() if prepared.as_numpy else coefs
        return prepared.repack([None if g is None else spread(coefs, g, n).to(_attribution_dtype(t, values))
                                for t, g in zip(prepared.tensors, groups)])

    _alpha = 0.0

    def _example_draws(self, features: int, samples: int) -> Tensor:
        """One example's coalitions [S, F], as Captum draws them: example by example. After each
        example Captum's fit takes from torch's generator (its DataLoader's base seed, then the
        initial weights of the nn.Linear it copies the fitted coefficients into); as much is taken
        here, so every example of a batch sees Captum's coalitions under the same seed."""
        found = torch.stack([self._draw(features, s) for s in range(samples)])
        torch.empty((), dtype=torch.int64).random_()  # after the last example too: so does Captum's last fit,
        torch.empty(1, features).uniform_()  # and the next call draws where Captum's would
        torch.empty(1).uniform_()
        return found

    def _draw(self, features: int, sample: int) -> Tensor:
        raise NotImplementedError

    def _measure(self, prepared, n: int, draws: Tensor):
        return None

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        return weighted_linear_fit(x, y, w, self._alpha)

    def _weights(self, draws: Tensor, measured, features: int) -> Tensor:
        raise NotImplementedError


def _from_zero(groups: list, features: int) -> tuple[list, int]:
    """Ids shifted to start at 0 (Captum's Lime does the same, with a warning)."""
    low = min(int(g.min()) for g in groups if g is not None and g.numel())
    if low == 0:
        return groups, features
    return [None if g is None else g - low for g in groups], features - low


class Lime(_Surrogate):
    """LIME (Ribeiro et al.): a Lasso (`alpha`, 0 for least squares) fitted per example to
    `n_samples` coalitions of fair coins, weighted by exp(−d²/(2·kernel_width²)) with d the
    `distance_mode` distance between the example and its perturbed copy (all attributed inputs,
    flattened). Captum's defaults: α = 0.01, cosine distance, width 1.

    Captum's own objects are taken too: `similarity_func(original, perturbed, interpretable_sample)`
    gives each copy's weight (original and perturbed as the inputs were given, one example each;
    the sample a float [1, F] of 0/1); `interpretable_model` is fitted instead of the Lasso, either
    Captum's interface (fit(DataLoader of (samples, outputs, weights)), representation()) or
    scikit-learn's (fit(X, y, sample_weight=...), coef_)."""

    #: its weights are distances in the input's own space, which a missing value has none in
    missing_values = None

    def __init__(self, model, alpha: float = 0.01, kernel_width: float = 1.0, distance_mode: str = "cosine", *,
                 similarity_func: Optional[Callable[..., Any]] = None, interpretable_model: Any = None,
                 perturb_func: Optional[Callable[..., Any]] = None, **kwargs: Any):
        super().__init__(model, **kwargs)
        if perturb_func is not None:
            raise InputError("Lime draws its coalitions as Captum's default perturb_func does (fair coins); a custom "
                             "perturb_func is not supported: leave it out")
        if similarity_func is not None and not callable(similarity_func):
            raise InputError(f"similarity_func must be callable (original, perturbed, interpretable_sample), "
                             f"got {type(similarity_func).__name__}")
        if interpretable_model is not None and not hasattr(interpretable_model, "fit"):
            raise InputError(f"interpretable_model {type(interpretable_model).__name__} has no fit(): give Captum's "
                             "interpretable model or a scikit-learn linear estimator")
        self.similarity_func, self.interpretable_model = similarity_func, interpretable_model
        if distance_mode not in DISTANCES:
            raise InputError(f"unknown distance_mode {distance_mode!r}; use one of {list(DISTANCES)}")
        if not alpha >= 0 or not kernel_width > 0:
            raise InputError(f"alpha must be >= 0 and kernel_width > 0, got {alpha!r} and {kernel_width!r}")
        self._alpha, self.kernel_width, self.distance_mode = float(alpha), float(kernel_width), distance_mode

    def _draw(self, features: int, sample: int) -> Tensor:
        return torch.bernoulli(torch.full((1, features), 0.5))[0].bool()

    def _measure(self, prepared, n: int, draws: Tensor):
        if self.similarity_func is not None:
            return self._similarities(prepared, n, draws)
        originals = torch.cat([t.reshape(n, -1).float() for t, a in zip(prepared.tensors, prepared.attributed) if a], 1)

        def distance(copies: list) -> Tensor:
            rows = torch.cat([c.reshape(c.shape[0], -1).float() for c in copies], 1)
            base = originals.repeat(rows.shape[0] // n, 1)
            if self.distance_mode == "cosine":
                return 1 - torch.nn.functional.cosine_similarity(base, rows, dim=1)
            return (base - rows).norm(dim=1)
        return distance

    def _similarities(self, prepared, n: int, draws: Tensor):
        """Each copy's weight from the user's `similarity_func`, called per copy as Captum calls it."""
        onnx_order = [i for i, a in enumerate(prepared.attributed) if a]

        def given(tensors: list) -> Any:
            """The attributed inputs (in ONNX order) in the user's structure, held ones as given."""
            return prepared.repack_user([tensors[onnx_order.index(p)] if p in onnx_order else prepared.tensors[p]
                                         for p in prepared.positions])
        originals = [given([prepared.tensors[i][e:e + 1] for i in onnx_order]) for e in range(n)]
        done = [0]  # samples measured so far: the evaluator measures its chunks in order

        def similarity(copies: list) -> Tensor:
            k = copies[0].shape[0] // n
            out = torch.empty(k * n, dtype=torch.float64)
            for row in range(k * n):
                sample, e = done[0] + row // n, row % n
                value = self.similarity_func(originals[e], given([c[row:row + 1] for c in copies]),
                                             draws[sample, e].float()[None])
                if torch.as_tensor(value).numel() != 1:
                    raise InputError(f"similarity_func must give one number per perturbed copy, got shape "
                                     f"{list(torch.as_tensor(value).shape)}")
                out[row] = float(value)
            done[0] += k
            return out
        return similarity

    def _weights(self, draws: Tensor, measured, features: int) -> Tensor:
        if self.similarity_func is not None:
            if not bool(torch.isfinite(measured).all()) or bool((measured.double().sum(0) <= 0).any()):
                raise InputError("similarity_func gave no positive weight to an example's samples (or a NaN): "
                                 "the surrogate cannot be fitted; weights must be finite, >= 0 and not all 0")
            return measured.double()
        return torch.exp(-measured.double() ** 2 / (2 * self.kernel_width ** 2))

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        model = self.interpretable_model
        if model is None:
            return super()._fit(x, y, w)
        if hasattr(model, "representation"):  # Captum's interpretable models
            from torch.utils.data import DataLoader, TensorDataset

            rows = TensorDataset(*(torch.from_numpy(a).float() for a in (x, y, w)))
            with torch.random.fork_rng(devices=[]):  # what it draws is taken at the draws (_example_draws)
                model.fit(DataLoader(rows, batch_size=len(x)))
            return model.representation().detach().cpu().double().numpy().reshape(-1)
        model.fit(x, y, sample_weight=w)  # scikit-learn's
        return np.asarray(model.coef_, dtype=np.float64).reshape(-1)


class KernelShap(_Surrogate):
    """Kernel SHAP (Lundberg & Lee): the Shapley kernel as sampling distribution and weights, least
    squares; the endpoints (all present, all absent) weigh 1e6 so the fit nearly meets them, and
    the coefficients approach the Shapley values as `n_samples` grows."""

    ENDPOINT_WEIGHT = 1e6

    def _draw(self, features: int, sample: int) -> Tensor:
        if sample < 2 or features < 2:  # the endpoints first (with one feature there is nothing else)
            return torch.full((features,), sample % 2 == 0)
        sizes = torch.arange(features, dtype=torch.float32)
        probs = torch.tensor(float(features - 1)) / (sizes * (features - sizes))
        probs[0] = 0.0
        k = int(torch.distributions.Categorical(probs).sample())
        scores = torch.randn(1, features)
        return (scores > torch.kthvalue(scores, features - k).values.item())[0]

    def _weights(self, draws: Tensor, measured, features: int) -> Tensor:
        present = draws.sum(-1)
        return torch.where((present == 0) | (present == features), self.ENDPOINT_WEIGHT, 1.0).double()
