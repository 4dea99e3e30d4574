"""How good are the attributions? Infidelity and sensitivity-max (Yeh et al. 2019, "On the
(In)fidelity and Sensitivity of Explanations"), and the model-parameter randomisation check
(Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Infidelity and sensitivity-max follow Captum's definitions and its perturbation-function
contract, so the same perturbations under the same seed give the same numbers.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from onnx_attr.deeplift.engine import Targets
from onnx_attr.errors import InputError
from onnx_attr.importing.rows import pick_output as _pick
from onnx_attr.methods._inputs import _as_list, example_count, prepare
from onnx_attr.methods.base import output_index, target_values
from onnx_attr.methods.noise_tunnel import _repeat_target

PerturbFunc = Callable[..., Any]


def gaussian_perturbation(stdev: float = 0.1, multiply_by_inputs: bool = True) -> PerturbFunc:
    """Yeh et al.'s noisy perturbation I ~ N(0, stdev²): the inputs become x - I.

    For attributions that are multiplied by the input change (DeepLift, IG: "global"), the
    perturbation entering I·φ is I / (x - x0), as Captum's `infidelity_perturb_func_decorator`
    does, so that I·φ estimates f(x) - f(x - I) for both kinds.
    """

    def perturb(inputs: Any, baselines: Any = 0.0):
        single = isinstance(inputs, Tensor)
        xs = _tensors(inputs)
        bs = [baselines] * len(xs) if isinstance(baselines, (Tensor, int, float)) else list(baselines)
        noise = [torch.randn_like(x) * stdev for x in xs]
        perturbed = [x - n for x, n in zip(xs, noise)]
        if multiply_by_inputs:
            noise = [_safe_div(n, x - b) for n, x, b in zip(noise, xs, bs)]
        return (noise[0], perturbed[0]) if single else (tuple(noise), tuple(perturbed))

    return perturb


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    return a / torch.where(b == 0, torch.ones_like(b), b)


def infidelity(model, perturb_func_or_attributions: Any, inputs: Any, attributions: Any = None,
               baselines: Any = None, additional_forward_args: Any = None, target: Any = None,
               n_perturb_samples: int = 10, max_examples_per_batch: Optional[int] = None, normalize: bool = False,
               *, perturb_func: Optional[PerturbFunc] = None, output: Union[str, int, None] = None) -> Tensor:
    """E_I[(I·φ(x) - (f(x) - f(x - I)))²] per example: how well the attributions predict the
    output's response to perturbations (lower is better).

    Called as Captum calls it, `infidelity(model, perturb_func, inputs, attributions, baselines,
    additional_forward_args, target, n_perturb_samples, max_examples_per_batch, normalize)`, or
    as `infidelity(model, attributions, inputs, perturb_func=..., ...)` (default perturbation:
    `gaussian_perturbation()`). `perturb_func` gets the inputs repeated `n_perturb_samples` times
    per example (a tensor for one input, a tuple for several) and, if it takes two arguments, the
    baselines repeated alike; it returns (perturbations, perturbed inputs) in the same form. With
    `normalize`, φ is first scaled by the least-squares factor β, so the value does not depend on
    the attributions' scale.
    """
    if callable(perturb_func_or_attributions) and not isinstance(perturb_func_or_attributions, (Tensor, np.ndarray)):
        if perturb_func is not None:
            raise InputError("perturb_func given twice (positionally and by name)")
        perturb_func = perturb_func_or_attributions
        if attributions is None:
            raise InputError("infidelity needs the attributions to score")
    else:
        if attributions is not None:
            raise InputError("attributions given twice: call infidelity(model, perturb_func, inputs, attributions) "
                             "or infidelity(model, attributions, inputs, perturb_func=...)")
        attributions = perturb_func_or_attributions
    if not isinstance(n_perturb_samples, (int, np.integer)) or n_perturb_samples < 1:
        raise InputError(f"n_perturb_samples must be a positive int, got {n_perturb_samples!r}")
    if max_examples_per_batch is not None and (not isinstance(max_examples_per_batch, (int, np.integer))
                                               or max_examples_per_batch < 1):
        raise InputError(f"max_examples_per_batch must be a positive int, got {max_examples_per_batch!r}")
    if perturb_func is not None and not callable(perturb_func):
        raise InputError(f"perturb_func must be callable, got {type(perturb_func).__name__}")
    prepared, n, index = _prepared(model, inputs, baselines, additional_forward_args, output)
    phi = _matching(attributions, prepared)
    s = n_perturb_samples
    repeated = [t.repeat_interleave(s, 0) if t.dim() and t.shape[0] == n else t for t in prepared.tensors]
    chosen = [i for i, a in enumerate(prepared.attributed) if a]
    bases = [prepared.baselines[i].repeat_interleave(s, 0) if prepared.baselines[i].shape[0] == n > 1
             else prepared.baselines[i] for i in chosen]
    perturb = perturb_func or gaussian_perturbation()
    given = [repeated[i] for i in chosen]
    args = [given[0] if len(given) == 1 else tuple(given)]
    if _arity(perturb) > 1:
        args.append(bases[0] if len(bases) == 1 else tuple(bases))
    result = perturb(*args)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise InputError("perturb_func must return (perturbations, perturbed inputs)")
    perturbations, perturbed = list(_tensors(result[0])), list(_tensors(result[1]))
    if len(perturbed) != len(chosen) or len(perturbations) != len(chosen) or any(
            torch.broadcast_shapes(p.shape, repeated[i].shape) != repeated[i].shape
            for p, i in zip(perturbations, chosen)) or any(p.shape != repeated[i].shape
                                                            for p, i in zip(perturbed, chosen)):
        raise InputError("perturb_func must return one perturbation and one perturbed input per attributed "
                         "input, each of the repeated inputs' shape")
    fed = list(repeated)
    for i, p in zip(chosen, perturbed):
        fed[i] = p.to(repeated[i].dtype)
    targets = Targets(target, n)
    many = Targets(_repeat_target(target, n, s), n * s)
    change = (target_values(model, prepared.tensors, targets, index).double().repeat_interleave(s)
              - target_values(model, fed, many, index).double())
    dot = sum((p.double() * a.double().repeat_interleave(s, 0)).reshape(n * s, -1).sum(1)
              for p, a in zip(perturbations, phi))
    dot, change = dot.reshape(n, s), change.reshape(n, s)
    if not normalize:
        return ((dot - change) ** 2).mean(1)
    beta = _safe_div((dot * change).sum(1), (dot * dot).sum(1))
    return ((beta[:, None] * dot - change) ** 2).mean(1)


def _arity(func: Callable) -> int:
    """Positional parameters a perturbation function takes (2 when it cannot be read)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def uniform_perturbation(radius: float = 0.02) -> PerturbFunc:
    """Uniform noise in the L∞ ball of `radius` (Yeh et al.'s and Captum's default)."""

    def perturb(inputs: Any) -> Any:
        moved = [x + torch.empty(x.shape, dtype=torch.float32).uniform_(-radius, radius).to(x)
                 for x in _tensors(inputs)]
        return moved[0] if isinstance(inputs, Tensor) else tuple(moved)

    return perturb


def sensitivity_max(method, inputs: Any, perturb_func: Optional[PerturbFunc] = None, perturb_radius: float = 0.02,
                    n_perturb_samples: int = 10, norm_ord: Union[str, float] = "fro",
                    max_examples_per_batch: Optional[int] = None, **attribute_kwargs: Any) -> Tensor:
    """max over perturbed inputs x' of ‖φ(x') - φ(x)‖ / ‖φ(x)‖ per example: how much the
    explanation moves under input noise no larger than `perturb_radius` (lower is steadier).

    `method` is an attribution object (`onnx_attr.DeepLift(model)`, ...) or its `attribute`, as
    Captum takes it; `attribute_kwargs` go to it (target, baselines, additional_forward_args,
    ...), repeated with their examples. `perturb_func(inputs[, radius])` takes the inputs repeated
    `n_perturb_samples` times per example (a tensor for one input, a tuple for several).
    """
    explain = method.attribute if hasattr(method, "attribute") else method
    if not callable(explain):
        raise InputError(f"sensitivity_max needs an attribution method or its attribute function, got "
                         f"{type(method).__name__}")
    if not isinstance(n_perturb_samples, (int, np.integer)) or n_perturb_samples < 1:
        raise InputError(f"n_perturb_samples must be a positive int, got {n_perturb_samples!r}")
    if perturb_func is not None and not callable(perturb_func):
        raise InputError(f"perturb_func must be callable, got {type(perturb_func).__name__}")
    from onnx_attr.methods.noise_tunnel import _repeat_per_example

    values, repack = _as_list(inputs)
    tensors = [torch.as_tensor(v) for v in values]
    if any(t.dim() == 0 for t in tensors):
        raise InputError("sensitivity_max needs a batch axis on every input (shape [N, ...])")
    n, s = tensors[0].shape[0], n_perturb_samples
    perturb = perturb_func or uniform_perturbation(perturb_radius)
    with torch.no_grad():
        explained = _flat(explain(repack(tensors), **attribute_kwargs), n)
        kwargs = {key: _repeat_per_example(value, n, s, key) for key, value in attribute_kwargs.items()}
        if "target" in attribute_kwargs:
            kwargs["target"] = _repeat_target(attribute_kwargs["target"], n, s)
        repeated = [t.repeat_interleave(s, 0) for t in tensors]
        given = repeated[0] if len(repeated) == 1 else tuple(repeated)
        moved_inputs = perturb(given, perturb_radius) if perturb_func is not None and _arity(perturb) > 1 \
            else perturb(given)
        moved = _flat(explain(repack(list(_tensors(moved_inputs))), **kwargs), n * s)
    scale = _norm(explained, norm_ord)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    ratios = _norm(explained.repeat_interleave(s, 0) - moved, norm_ord) / scale.repeat_interleave(s)
    return ratios.reshape(n, s).max(1).values


def parameter_randomization(make_method: Callable[[Any], Any], model, inputs: Any, *, seed: int = 0,
                            absolute: bool = True, **attribute_kwargs: Any) -> dict:
    """Adebayo et al.'s model-randomisation sanity check: re-draw every weight tensor of the
    imported model (rank ≥ 2: kernels and matrices; Gaussian with each tensor's own standard
    deviation), attribute again, and report the Spearman rank correlation between the trained
    and the randomised model's attributions per example. An explanation that depends on what the
    model learned gives a correlation near 0; one near 1 explains the input, not the model.

    `make_method(model)` builds the method (e.g. `onnx_attr.DeepLift`); `absolute` ranks |φ|.
    """
    trained = make_method(model).attribute(inputs, **attribute_kwargs)
    randomized = randomized_copy(model, seed)
    shuffled = make_method(randomized).attribute(inputs, **attribute_kwargs)
    first, _ = _as_list(trained)
    second, _ = _as_list(shuffled)
    n = torch.as_tensor(first[0]).shape[0]
    a, b = _flat(first, n), _flat(second, n)
    if absolute:
        a, b = a.abs(), b.abs()
    rho = torch.stack([spearman(a[i], b[i]) for i in range(n)])
    fed = prepare(model, inputs, None, attribute_kwargs.get("additional_forward_args"),
                  embedded={spec.name for spec in model.inputs}).tensors
    index = output_index(model, attribute_kwargs.get("output"))
    with torch.no_grad():
        before, after = (_pick(m(*fed), index) for m in (model, randomized))
    return {
        "spearman": rho.tolist(),
        "mean_spearman": float(rho.mean()),
        "randomized_tensors": randomized.randomized_tensors,
        "max_output_change": float((before - after).abs().max()),
        "seed": seed,
    }


def randomized_copy(model, seed: int = 0):
    """A deep copy of the model with every floating weight tensor of rank ≥ 2 re-drawn."""
    copied = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    names = []
    with torch.no_grad():
        for name, tensor in (*copied.module.named_parameters(), *copied.module.named_buffers()):
            if tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() > 1:
                std = float(tensor.double().std()) or 1.0
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float64).mul_(std))
                names.append(name)
    if not names:
        raise InputError("the model has no weight tensors (rank >= 2) to randomise")
    copied.randomized_tensors = names
    return copied


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of two flat tensors, ties given their average rank."""
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = (ra.norm() * rb.norm())
    return (ra * rb).sum() / denominator if denominator > 0 else torch.tensor(0.0, dtype=torch.float64)


def _ranks(x: Tensor) -> Tensor:
    values, order = torch.sort(x)
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # 1-based average rank of each group of ties
    ranks = torch.empty_like(x)
    ranks[order] = average[inverse]
    return ranks


def _prepared(model, inputs, baselines, additional_forward_args, output):
    prepared = prepare(model, inputs, baselines, additional_forward_args, embedded=set())
    n = example_count(model, prepared)
    return prepared, n, output_index(model, output)


def _matching(attributions: Any, prepared) -> list[Tensor]:
    """The attributions as tensors, one per attributed input, with the inputs' shapes."""
    items, _ = _as_list(attributions)
    chosen = [t for t, a in zip(prepared.tensors, prepared.attributed) if a]
    if len(items) != len(chosen):
        raise InputError(f"{len(items)} attribution tensor(s) for {len(chosen)} attributed input(s)")
    out = []
    for item, x in zip(items, chosen):
        a = torch.as_tensor(np.asarray(item) if not isinstance(item, Tensor) else item).to(x.device)
        if a.shape != x.shape:
            raise InputError(f"attributions of shape {list(a.shape)} for an input of shape {list(x.shape)}")
        out.append(a)
    return out


def _tensors(value: Any) -> list[Tensor]:
    return [value] if isinstance(value, Tensor) else list(value)


def _flat(attributions: Any, n: int) -> Tensor:
    items, _ = _as_list(attributions)
    return torch.cat([torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a).reshape(n, -1).double()
                      for a in items], 1)


def _norm(rows: Tensor, norm_ord: Union[str, float]) -> Tensor:
    return torch.linalg.vector_norm(rows, 2 if norm_ord == "fro" else float(norm_ord), dim=1)
