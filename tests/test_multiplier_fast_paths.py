"""The steady-state fast paths of the rules give the multipliers of their general form.

The product rule's closed form for Mul is checked bit for bit against autograd through the same
product at the midpoints (what it replaced); the CPU rescale path, which finds the elements near
the reference once and replaces them, against the accelerator formulation (a mask and `where`
over every element) forced on CPU; the quantized block's closed form against autograd through
`credited`, its decomposition.
"""

from __future__ import annotations

import pytest
import torch

from onnx_attr.deeplift.rules import paired
from onnx_attr.deeplift.rules.paired import product_multipliers, rescale_multiplier


def _autograd_product(a, a0, b, b0, grad):
    a_mid, b_mid = (a + a0) / 2, (b + b0) / 2
    ag, bg = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    (grad_a,) = torch.autograd.grad(torch.mul(ag, b_mid), ag, grad)
    (grad_b,) = torch.autograd.grad(torch.mul(a_mid, bg), bg, grad)
    return grad_a, grad_b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("a_shape,b_shape", [((2, 8, 6, 5), (2, 8, 6, 5)),  # SiLU's x·sigmoid(x)
                                             ((2, 8, 6, 5), (1, 8, 1, 1)),  # a per-channel gate
                                             ((1, 5), (3, 4, 5))])  # a broadcast row
def test_closed_form_product_is_autograd_through_mul_bit_for_bit(a_shape, b_shape, dtype):
    gen = torch.Generator().manual_seed(3)
    a, b = (torch.randn(a_shape, generator=gen, dtype=dtype) * 300 for _ in range(2)) if a_shape == b_shape else \
        (torch.randn(a_shape, generator=gen, dtype=dtype) * 300, torch.randn(b_shape, generator=gen, dtype=dtype))
    a0 = torch.randn((1, *a_shape[1:]), generator=gen, dtype=dtype) * 300  # a shared reference, batch 1
    b0 = torch.randn((1, *b_shape[1:]), generator=gen, dtype=dtype)
    grad = torch.randn(torch.broadcast_shapes(a_shape, b_shape), generator=gen, dtype=dtype)
    got = product_multipliers(torch.mul, a, a0, b, b0, grad)
    want = _autograd_product(a, a0, b, b0, grad)
    for g, w, operand in zip(got, want, (a, b)):
        assert g.shape == operand.shape
        assert torch.equal(g, w)


@pytest.mark.parametrize("f", [torch.sigmoid, torch.tanh, torch.sqrt, torch.exp], ids=lambda f: f.__name__)
def test_cpu_rescale_path_agrees_with_the_masked_formulation(f, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand((2, 16, 32, 32), generator=gen) * 80 + 1e-3  # positive: sqrt's domain, exp in range
    x0 = torch.rand((1, 16, 32, 32), generator=gen) * 80 + 1e-3
    flat, flat0 = x.view(-1), x0.expand_as(x).reshape(-1)
    flat[::97] = flat0[::97]  # at the reference: the gradient
    flat[1::89] = flat0[1::89] * (1 + 1e-6)  # within the tolerance: gradient or secant, whichever is exact
    y, y0 = f(x), f(x0)
    monkeypatch.setattr(paired, "ALWAYS_SYNC_FREE", False)
    fast = rescale_multiplier(f, x, x0, y, y0, memo={})
    monkeypatch.setattr(paired, "ALWAYS_SYNC_FREE", True)
    masked = rescale_multiplier(f, x, x0, y, y0, memo={})
    far = (x - x0).abs() > paired.secant_tolerance(x, x0)
    assert torch.equal(fast[far], ((y - y0) / (x - x0))[far])  # the secant, bit for bit
    torch.testing.assert_close(fast, masked, rtol=1e-6, atol=0)
    assert torch.isfinite(fast).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_settling_a_few_close_elements_in_numpy_is_the_torch_formula_bit_for_bit(dtype):
    """The CPU path settles the close elements it took out in numpy (a fifth of torch's per-op cost on
    a few elements): the same IEEE arithmetic, so the same bits as the formula in torch, at the
    edges too (x == x0 with an infinite gradient: √ at 0; a NaN gradient; a secant lost to rounding)."""
    gen = torch.Generator().manual_seed(11)
    x0 = (torch.rand(64, generator=gen, dtype=torch.float64) * 500).to(dtype)
    x = x0.clone()
    x[8:32] = x0[8:32] * (1 + torch.randn(24, generator=gen, dtype=torch.float64).to(dtype) * 1e-3)
    x0[:4] = 0.0
    x[:4] = 0.0
    y, y0 = torch.sqrt(x), torch.sqrt(x0)
    grad = 0.5 / torch.sqrt(x)  # inf at 0
    grad[40] = float("nan")
    want = paired.settle_close(grad, x, x0, y, y0)
    got = paired._settle_few(grad, x, x0, y, y0)
    assert got.dtype == want.dtype
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    assert (got[:4] == 0).all()  # at the reference where the gradient is not finite: 0
    distance, tolerance = (x - x0).abs(), torch.tensor(1e-2, dtype=dtype)
    assert torch.equal(paired._close_positions(distance, tolerance),
                       distance.le(tolerance).nonzero().squeeze(1))


def test_quantized_block_closed_form_is_the_decomposition():
    """The block's rule without its decomposition: what autograd through `credited` gives."""
    from onnx_attr.deeplift.rules.quantized import credit_share, credited, residual_share

    gen = torch.Generator().manual_seed(7)
    weight = torch.randn((6, 5), generator=gen, dtype=torch.float64)
    exact = lambda v: torch.round(v * 20) / 20 @ weight  # noqa: E731  (a rounding block, x → y)
    linear = lambda v: v @ weight  # noqa: E731
    x = torch.randn((3, 4, 6), generator=gen, dtype=torch.float64) * 100
    x0 = torch.randn((1, 4, 6), generator=gen, dtype=torch.float64) * 100
    grad = torch.randn((3, 4, 5), generator=gen, dtype=torch.float64)
    live = x.clone().requires_grad_(True)
    y, _ = credited(exact, linear, live, x0.expand_as(x), 0)
    (want,) = torch.autograd.grad(y, live, grad)
    residual = (exact(x) - exact(x0)) - (linear(x) - linear(x0))
    through = grad @ weight.T
    got = through + credit_share(grad, residual, x, x0.expand_as(x), 0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    dx = x - x0
    assert torch.allclose((got * dx).sum((1, 2)), (grad * (exact(x) - exact(x0))).sum((1, 2)), rtol=1e-10)
    # the rule's form: g·r from g·Δy − through·Δx, the map not run at the reference
    short = through + residual_share(grad, exact(x) - exact(x0), through, x, x0.expand_as(x), 0)
    torch.testing.assert_close(short, want, rtol=1e-9, atol=1e-9 * want.abs().max().item())
    narrow = [t.float() for t in (grad, exact(x) - exact(x0), through, x, x0.expand_as(x))]
    short32 = narrow[2] + residual_share(*narrow, 0)
    total, change = (short32.double() * dx).sum((1, 2)), (grad * (exact(x) - exact(x0))).sum((1, 2))
    assert ((total - change).abs() <= 1e-5 * change.abs().clamp(min=1)).all()  # complete in float32 too


def test_credited_product_is_credited_in_closed_form():
    """The recurrent rule's quantized products (`credited_product`, a custom backward) against
    autograd through `credited`, the decomposition it replaced; and complete per example."""
    from onnx_attr.deeplift.rules.quantized import credited, credited_product

    gen = torch.Generator().manual_seed(3)

    class Weight:  # a QuantizedWeight's interface: the rounding product, the float matrix
        weight = torch.randn((6, 5), generator=gen, dtype=torch.float64)

        def exact(self, v):
            return torch.round(v * 8) / 8 @ self.weight

    w = Weight()
    x = torch.randn((3, 6), generator=gen, dtype=torch.float64) * 40
    x0 = torch.randn((3, 6), generator=gen, dtype=torch.float64) * 40
    grad = torch.randn((3, 5), generator=gen, dtype=torch.float64)
    live = x.clone().requires_grad_(True)
    y, _ = credited(w.exact, lambda v: v @ w.weight, live, x0, 0)
    (want,) = torch.autograd.grad(y, live, grad)
    live = x.clone().requires_grad_(True)
    y2, y0 = credited_product(w, live, x0, 0)
    (got,) = torch.autograd.grad(y2, live, grad)
    assert torch.equal(y2.detach(), y.detach())
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
    total, change = (got * (x - x0)).sum(1), (grad * (y2.detach() - y0)).sum(1)
    torch.testing.assert_close(total, change, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("memo", [None, {}], ids=["per call", "kept per reference"])
def test_slope_where_another_input_broadcasts_x_is_per_output_element(memo):
    """Pow(x, Y) with x [1, 4] and a constant Y [3, 4]: the output is [3, 4], and where x == x0 the
    multiplier is each output element's own slope Y·x^(Y-1), not a gradient summed over the rows."""
    x = torch.tensor([[1.5, 2.0, 3.0, 0.7]], dtype=torch.float64)
    x0 = x.clone()
    x0[0, 1] = 0.5  # one element away from its reference: the secant there
    exponent = torch.tensor([[2.0], [3.0], [0.5]], dtype=torch.float64).expand(3, 4)
    f = lambda t: torch.pow(t, exponent)  # noqa: E731
    m = rescale_multiplier(f, x, x0, f(x), f(x0), elementwise=False, memo=memo)
    want = exponent * x.pow(exponent - 1)
    want[:, 1] = (f(x) - f(x0))[:, 1] / 1.5
    torch.testing.assert_close(m, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("f", [torch.sigmoid, torch.tanh, torch.nn.functional.silu], ids=lambda f: getattr(f, "__name__", "f"))
def test_reference_slope_is_taken_on_the_close_elements_in_every_call(f, monkeypatch):
    """Every call with the same reference (and memo) takes f'(x0) on its few close elements alone,
    never over the whole reference (that pass, from a reference's second use, made a second call on
    layout_cdla cost ~1.7x a steady one and held one more map per node, for no steady gain).
    Oracle: f'(x0) by autograd over the whole reference, at those elements; the calls agree bit
    for bit."""
    gen = torch.Generator().manual_seed(11)
    x0 = torch.randn((1, 8, 16, 16), generator=gen, dtype=torch.float64) * 40
    x = torch.randn((2, 8, 16, 16), generator=gen, dtype=torch.float64) * 40
    flat, flat0 = x.view(-1), x0.expand_as(x).reshape(-1)
    flat[::53] = flat0[::53]  # at the reference: the slope there
    whole = []
    slope = paired._slope
    monkeypatch.setattr(paired, "_slope", lambda fn, t: whole.append(t.numel()) or slope(fn, t))
    memo: dict = {}
    calls = [rescale_multiplier(f, x, x0, f(x), f(x0), memo=memo) for _ in range(3)]
    assert whole == [] and "slope" not in memo
    assert torch.equal(calls[0], calls[1]) and torch.equal(calls[1], calls[2])
    at = (x - x0) == 0
    torch.testing.assert_close(calls[0][at], slope(f, x0).expand_as(x)[at], rtol=1e-15, atol=0)
