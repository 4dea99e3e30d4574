"""One-node ONNX models for every op the DeepLift rules claim (used by the completeness tests).

A case is (op, attrs, variable input shapes, constant inputs, opset, sampler). Inputs named v0,
v1, ... vary; constants are initializers. The sampler draws values in the op's domain, so that
input and reference land on both sides of its kinks; `reference` draws the reference where it is
not another draw of the sampler (a zero baseline meeting a kink at 0). The completeness suite
multiplies both by each of SCALES. Where the op's domain or float32's range ends (exp overflows
above 88, Asin is defined on [-1, 1]) the scaled values are clipped to `clip`, so the large
scales put input and reference at that edge and far from each other instead of at infinities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


def normal(rng, shape):
    return rng.standard_normal(shape) * 2.0


def positive(rng, shape):
    return rng.uniform(0.1, 3.0, shape)


def unit(rng, shape):
    return rng.uniform(-0.95, 0.95, shape)


def above_one(rng, shape):
    return rng.uniform(1.05, 4.0, shape)


def power(rng, shape):
    """Magnitudes over 14 decades, as a spectrogram's power: most far below the largest."""
    return 10.0 ** rng.uniform(-12, 2, shape)


def zeros(rng, shape):
    return np.zeros(shape)


#: the input scales every rule case is checked at (see `Case.clip`)
SCALES = (1, 10, 100, 1000)


@dataclass
class Case:
    op: str
    attrs: dict = field(default_factory=dict)
    shapes: tuple = ((3, 5),)
    consts: dict = field(default_factory=dict)  # position -> array (inserted among the inputs)
    opset: int = 17
    sampler: Callable = normal
    label: str = ""
    full_baseline: bool = False  # one baseline per example (operands whose axis 0 is not a batch)
    reference: Callable | None = None  # draws the reference; the sampler when None
    clip: tuple[float, float] | None = None  # the op's finite range: scaled draws are clipped to it

    def draw(self, sampler: Callable, rng, shape, scale: float) -> np.ndarray:
        """`sampler`'s values at `scale`, inside the op's finite range."""
        values = sampler(rng, shape) * scale
        return values if self.clip is None else np.clip(values, *self.clip)

    @property
    def id(self) -> str:
        return self.op + (f"-{self.label}" if self.label else "")


R = np.random.default_rng(7)
CASES = [
    *(Case(op) for op in ("Relu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Erf", "Abs", "Sin", "Cos",
                          "Atan", "Asinh", "HardSwish")),
    *(Case(op) for op in ("Sign", "Floor", "Ceil", "Round")),  # steps: the secant is the jump
    Case("Exp", clip=(-1e9, 80.0)), Case("Sinh", clip=(-80.0, 80.0)),  # exp(88.7) overflows float32
    Case("Mish", opset=18),
    Case("Log", sampler=positive), Case("Sqrt", sampler=positive), Case("Reciprocal", sampler=positive),
    Case("Sqrt", shapes=((3, 8),), sampler=power, reference=zeros, label="zero-reference"),
    Case("Log", shapes=((3, 8),), sampler=power, label="near-zero"),
    Case("Reciprocal", shapes=((3, 8),), sampler=power, label="near-zero"),
    Case("Pow", shapes=((3, 8),), consts={1: np.array(0.5)}, sampler=power, reference=zeros, label="root-zero-reference"),
    Case("Tan", sampler=unit),  # at large scales input and reference fall in different periods, near poles
    Case("Asin", sampler=unit, clip=(-1.0, 1.0)), Case("Acos", sampler=unit, clip=(-1.0, 1.0)),
    Case("Atanh", sampler=unit, clip=(-0.999, 0.999)),  # domain [-1, 1]: the edge, where the slope is unbounded
    Case("Cosh", sampler=unit, clip=(-80.0, 80.0)), Case("Acosh", sampler=above_one),
    Case("LeakyRelu", {"alpha": 0.2}), Case("Elu", {"alpha": 0.7}), Case("Selu"), Case("Celu", {"alpha": 1.3}),
    Case("ThresholdedRelu", {"alpha": 0.5}), Case("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    Case("Shrink", {"lambd": 0.6, "bias": 0.3}, opset=9), Case("Gelu", opset=20),
    Case("Gelu", {"approximate": "tanh"}, opset=20, label="tanh"),
    Case("PRelu", shapes=((2, 3, 4),), consts={1: R.uniform(0.05, 0.5, (3, 1))}),
    Case("Clip", shapes=((3, 5),), consts={1: np.array(-0.5), 2: np.array(0.8)}, opset=13),
    Case("Pow", shapes=((3, 5),), consts={1: np.array(3.0)}, label="cube"),
    Case("Pow", shapes=((3, 5),), consts={0: np.array(1.7)}, label="exponent", clip=(-150.0, 150.0)),  # 1.7^167 = inf
    Case("Mul", shapes=((3, 5), (3, 5))), Case("Mul", shapes=((3, 5), (3, 1)), label="broadcast"),
    Case("MatMul", shapes=((2, 3, 4), (2, 4, 5))), Case("Gemm", {"transB": 1, "alpha": 0.7}, shapes=((1, 4), (5, 4)), full_baseline=True),
    Case("Einsum", {"equation": "bij,bjk->bik"}, shapes=((2, 3, 4), (2, 4, 2)), opset=12),
    Case("Conv", {"pads": [1, 0, 1, 1], "strides": [2, 1]}, shapes=((1, 2, 5, 5), (3, 2, 3, 2)),
         consts={2: R.standard_normal(3)}, full_baseline=True, label="variable-weight"),
    Case("ConvTranspose", {"strides": [2], "output_padding": [1], "pads": [1, 0]}, shapes=((1, 2, 4), (2, 3, 3)),
         full_baseline=True, label="variable-weight"),
    Case("Div", shapes=((3, 5), (3, 5)), sampler=positive), Case("Div", shapes=((3, 5),), consts={0: R.standard_normal((3, 5))},
                                                                 sampler=positive, label="const-numerator"),
    Case("Softmax", {"axis": 1}), Case("Softmax", {"axis": -1}, shapes=((2, 3, 4),), label="3d"),
    Case("Softmax", {"axis": 1}, shapes=((2, 3, 4),), opset=11, label="v11-2d-coerce"),
    Case("LogSoftmax", {"axis": 1}), Case("LogSoftmax", {"axis": 1}, shapes=((2, 3, 4),), opset=11, label="v11"),
    Case("LayerNormalization", {"axis": -1, "epsilon": 1e-5}, shapes=((3, 6),),
         consts={1: R.standard_normal(6), 2: R.standard_normal(6)}),
    Case("LayerNormalization", {"axis": -1, "epsilon": 1e-6}, shapes=((2, 4, 4, 8),),
         consts={1: R.standard_normal(8), 2: R.standard_normal(8)}, reference=zeros, label="channels-last-zero-reference"),
    Case("Softmax", {"axis": -1}, shapes=((2, 6),), reference=zeros, label="zero-reference"),
    Case("LogSoftmax", {"axis": -1}, shapes=((2, 6),), reference=zeros, label="zero-reference"),
    Case("RMSNormalization", {"axis": -1, "epsilon": 1e-5}, shapes=((3, 6),), consts={1: R.standard_normal(6)},
         opset=23),
    Case("RMSNormalization", {"axis": 1, "epsilon": 1e-3, "stash_type": 11}, shapes=((2, 3, 4),),
         consts={1: R.standard_normal((3, 4))}, opset=23, label="axis1"),
    Case("Attention", {"is_causal": 1}, shapes=((2, 2, 4, 3), (2, 2, 5, 3), (2, 2, 5, 3)), opset=23,
         full_baseline=True, label="4d-causal"),
    Case("Attention", {"is_causal": 1}, shapes=((2, 2, 3, 3), (2, 2, 2, 3), (2, 2, 2, 3)), opset=23,
         consts={3: np.zeros((3, 4)), 4: R.standard_normal((2, 2, 2, 3)), 5: R.standard_normal((2, 2, 2, 3))},
         full_baseline=True, label="4d-causal-cache"),
    Case("Attention", {"q_num_heads": 4, "kv_num_heads": 2, "softcap": 2.0}, shapes=((2, 3, 8), (2, 4, 4), (2, 4, 6)),
         consts={3: np.array([[0.0, -1e9, 0.0, 0.5]] * 3)}, opset=23, full_baseline=True, label="3d-gqa-mask-softcap"),
    Case("GroupNormalization", {"num_groups": 2, "epsilon": 1e-4}, shapes=((2, 4, 3),),
         consts={1: R.standard_normal(4), 2: R.standard_normal(4)}, opset=21),
    Case("MeanVarianceNormalization", {"axes": [2, 3]}, shapes=((2, 3, 2, 3),), opset=13),
    Case("Swish", {"alpha": 1.7}, opset=24),
    Case("SwiGLU", {"alpha": 1.3}, shapes=((3, 5), (3, 5)), opset=28),
    Case("SwiGLU", shapes=((3, 5),), consts={1: R.standard_normal((3, 5))}, opset=28, label="constant-gate"),
    Case("Selu", {"alpha": 2.0, "gamma": 3.0}, opset=22, label="custom"),
    Case("InstanceNormalization", {"epsilon": 1e-5}, shapes=((2, 3, 5),),
         consts={1: R.standard_normal(3), 2: R.standard_normal(3)}),
    Case("LRN", {"size": 3, "alpha": 0.01, "beta": 0.75, "bias": 1.0}, shapes=((2, 5, 3, 3),)),
    Case("LRN", {"size": 12, "alpha": 0.01, "beta": 0.75, "bias": 1.0}, shapes=((2, 5, 3, 3),)),  # wider than C
    Case("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, shapes=((2, 3, 6, 6),)),
    Case("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, shapes=((1, 2, 7, 7),), label="pad"),
    Case("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, shapes=((1, 2, 8, 8),), label="ceil"),
    Case("MaxPool", {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 0, 0, 1]}, shapes=((1, 2, 6, 6),),
         label="dilation-asym-pad"),
    Case("MaxPool", {"kernel_shape": [3], "strides": [1], "auto_pad": "SAME_UPPER"}, shapes=((2, 3, 7),), label="1d-same"),
    Case("MaxPool", {"kernel_shape": [2, 2, 2]}, shapes=((1, 2, 3, 4, 4),), label="3d"),
    Case("GlobalMaxPool", shapes=((2, 3, 5, 5),)),
    Case("Max", shapes=((3, 5), (3, 5), (3, 1)), opset=13), Case("Min", shapes=((3, 5), (3, 5)), opset=13),
    Case("Max", shapes=((3, 5),), consts={1: np.zeros((3, 5))}, opset=13, label="with-constant"),
    Case("ReduceMax", {"axes": [1], "keepdims": 0}, shapes=((3, 7),), opset=13),
    Case("ReduceMax", {"axes": [1, 2], "keepdims": 1}, shapes=((2, 3, 5),), opset=13, label="2axes"),
    Case("ReduceMin", {"axes": [1], "keepdims": 1}, shapes=((3, 6),), opset=13),
    Case("ReduceLogSumExp", {"axes": [1], "keepdims": 1}, shapes=((3, 6),), opset=13),
    Case("ReduceL2", {"axes": [1], "keepdims": 0}, shapes=((3, 6),), opset=13),
    Case("ReduceL1", {"axes": [1], "keepdims": 0}, shapes=((3, 6),), opset=13),
    Case("ReduceLogSum", {"axes": [1], "keepdims": 0}, shapes=((3, 6),), opset=13, sampler=positive),
    # opset 18: the axes an input (a constant the converter reads into its module, not the rule's args)
    Case("ReduceL2", {"keepdims": 1}, shapes=((3, 6),), consts={1: np.array([-1], np.int64)}, opset=18,
         label="axes-input"),
    Case("ReduceLogSumExp", {"keepdims": 0}, shapes=((3, 6),), consts={1: np.array([1], np.int64)}, opset=18,
         label="axes-input"),
    Case("ReduceSumSquare", {"axes": [1], "keepdims": 0}, shapes=((3, 6),), opset=13),
    Case("ReduceProd", {"axes": [1], "keepdims": 0}, shapes=((3, 5),), opset=13),
    Case("ReduceProd", {"axes": [1, 2], "keepdims": 1}, shapes=((2, 3, 2),), opset=13, label="2axes"),
    Case("ReduceProd", {"keepdims": 0}, shapes=((3, 4),), consts={1: np.array([-1], np.int64)}, opset=18,
         label="axes-input"),
]
