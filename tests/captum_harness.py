"""What the Captum-expectation tables share: Captum's seeding and its tensor comparison."""

from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import pytest
import torch


def check(actual: Any, expected: Any, delta: float, mode: str) -> None:
    """Captum's assertTensorAlmostEqual: the "sum" of |differences| or their "max" within delta."""
    a = torch.as_tensor(np.asarray(actual) if not isinstance(actual, torch.Tensor) else actual).double()
    e = torch.as_tensor(np.asarray(expected) if not isinstance(expected, torch.Tensor) else expected).double()
    assert a.numel() == e.numel(), f"shape {list(a.shape)} for an expected {list(e.shape)}"
    diff = (a.reshape(-1) - e.reshape(-1)).abs()
    size = float(diff.max()) if mode == "max" else float(diff.sum())
    assert size <= delta, f"got {a.tolist()}, Captum states {e.tolist()} (|diff| {mode} {size:.3g} > {delta})"


def captum_module(cls: str, **kwargs):
    """Build Captum's own test module, for its draws from torch's generator only: Captum's tests build
    it after seeding and before the method draws, so a case that calls this first draws as they do."""
    from captum.testing.helpers import basic_models

    return getattr(basic_models, cls)(**kwargs)


def run_case(run: Callable[[], list]) -> None:
    """One case under Captum's BaseTest seed (1234 for random, numpy and torch), every check of it."""
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    for actual, expected, delta, mode in run():
        check(actual, expected, delta, mode)


def registrar(cases: list) -> Callable[[str], Callable]:
    """`@case("file.py::test")`: a case function appended to `cases` as a pytest param named so."""
    def case(source: str):
        def register(func):
            cases.append(pytest.param(source, func, id=source))
            return func
        return register
    return case


def as_tuple(x: Any) -> tuple:
    """A result as a tuple: a tuple or list as its items, anything else as one item."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def captum_method(test_config: dict, algorithm: str):
    """Captum's own method for one entry of Captum's test_config: its class on a copy of the entry's
    module (at the entry's layer), inside a NoiseTunnel where the entry says so."""
    import copy

    import captum.attr as ca
    from captum.testing.attr.helpers.gen_test_utils import get_target_layer

    module = copy.deepcopy(test_config["model"])
    layer = test_config.get("layer")
    cls = getattr(ca, algorithm)
    method = cls(module, get_target_layer(module, layer)) if layer is not None else cls(module)
    return ca.NoiseTunnel(method) if test_config.get("noise_tunnel", False) else method
