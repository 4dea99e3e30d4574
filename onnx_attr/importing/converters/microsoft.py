"""The com.microsoft ops onnxruntime's transformer optimizer and quantizer write, as one named,
versioned set (`MICROSOFT_OPS`); every other custom domain stays refused by name.

Each op is an `Expansion`: a small fx graph of steps that are ordinary ONNX ops (Conv, Add, Gelu,
LayerNormalization, MatMul, Attention, ...), each step a module of ours tagged with its ONNX op
type. Run as it is, an expansion computes the fused op; the DeepLift rewrite splices its steps
into the model's graph (`rewrite.inline_expansions`), so every step gets the rule of the op it
is, and no fused op needs a rule of its own. Formulas follow onnxruntime's contrib-op
definitions, which is what `verify` checks them against.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.activations import Elementwise
from onnx_attr.importing.converters.attention import Attention
from onnx_attr.importing.converters.convolution import Conv, constant_conv
from onnx_attr.importing.converters.normalization import LayerNormalization
from onnx_attr.importing.converters.registry import register

MICROSOFT = "com.microsoft"
#: the set, with the domain version each definition is registered at (onnxruntime's contrib ops are version 1)
MICROSOFT_OPS = {op: 1 for op in (
    "FusedConv", "FusedGemm", "FusedMatMul", "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "Attention", "MultiHeadAttention", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QAttention", "MatMulNBits",
)}
#: onnxruntime's own ops of the ai.onnx domain (version 1), written by its transformer optimizer into graphs
#: of any opset, with the ONNX opset that defines each (None: ONNX has none). The ONNX checker refuses them
#: below that opset; `read` checks them as custom ops, and they convert here (LayerNormalization: normalization.py).
RUNTIME_ONNX_OPS = {"LayerNormalization": 17, "SimplifiedLayerNormalization": None}


class Expansion:
    """Builds the fx graph of one fused node: placeholders for its ONNX inputs (None when skipped),
    then steps, each a module called on earlier values and tagged with the ONNX op it computes."""

    def __init__(self, n_inputs: int):
        self.root, self.graph = nn.Module(), fx.Graph()
        # optional: a skipped input (an empty name, QAttention's absent mask) is not passed, and those
        # after it come by name
        self.inputs = [self.graph.placeholder(f"in{i}", default_value=None) for i in range(n_inputs)]

    def step(self, op_type: str, module: nn.Module, *args: Any, attrs: Optional[dict] = None) -> fx.Node:
        name = f"s{len(self.root._modules)}_{op_type}"
        self.root.add_module(name, module)
        node = self.graph.call_module(name, args)
        node.meta.update(onnx_op=op_type, onnx_domain="", onnx_attrs=dict(attrs or {}), onnx_opset=0,
                         onnx_outputs=("",))
        return node

    def item(self, value: fx.Node, index: int) -> fx.Node:
        import operator

        return self.graph.call_function(operator.getitem, (value, index))

    def build(self, outputs: fx.Node | Sequence[Optional[fx.Node]]) -> fx.GraphModule:
        self.graph.output(outputs if isinstance(outputs, fx.Node) else tuple(outputs))
        module = fx.GraphModule(self.root, self.graph)
        module.onnx_expansion = True  # rewrite.inline_expansions splices its steps into the model's graph
        return module


class Add(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


def _n_inputs(node) -> int:
    """The node's inputs up to its last given one (trailing skipped ones are not passed)."""
    names = list(node.input_values)
    while names and not names[-1]:
        names.pop()
    return len(names)


def _given(node, index: int) -> bool:
    return len(node.input_values) > index and bool(node.input_values[index])


def _used_outputs(node, allowed: Sequence[int]) -> None:
    extra = [i for i, name in enumerate(node.output_values) if name and i not in allowed]
    if extra:
        raise NotImplementedError(f"{node.operation_type} output(s) {extra} are not supported "
                                  f"(only {list(allowed)})")


def _gelu(approximate: str) -> tuple[nn.Module, dict]:
    return Elementwise(F.gelu, approximate=approximate), {"approximate": approximate}


@register("Gelu", 1, domain=MICROSOFT)
def convert_gelu(node, graph):
    """x·Φ(x), the erf form."""
    e = Expansion(1)
    module, attrs = _gelu("none")
    return result(node, e.build(e.step("Gelu", module, e.inputs[0], attrs=attrs)))


@register("BiasGelu", 1, domain=MICROSOFT)
def convert_bias_gelu(node, graph):
    """Gelu(A + B), the erf form."""
    e = Expansion(2)
    module, attrs = _gelu("none")
    return result(node, e.build(e.step("Gelu", module, e.step("Add", Add(), *e.inputs), attrs=attrs)))


@register("FastGelu", 1, domain=MICROSOFT)
def convert_fast_gelu(node, graph):
    """The tanh approximation of Gelu, of X (+ bias): ONNX's Gelu with approximate="tanh"."""
    e = Expansion(_n_inputs(node))
    x = e.step("Add", Add(), *e.inputs[:2]) if _given(node, 1) else e.inputs[0]
    module, attrs = _gelu("tanh")
    return result(node, e.build(e.step("Gelu", module, x, attrs=attrs)))


def _swish(x: Tensor, alpha: float) -> Tensor:
    return x * torch.sigmoid(alpha * x)


@register("QuickGelu", 1, domain=MICROSOFT)
def convert_quick_gelu(node, graph):
    """x·sigmoid(alpha·x) (alpha 1.702 by default): ONNX's Swish."""
    alpha = float(node.attributes.get("alpha", 1.702))
    e = Expansion(1)
    return result(node, e.build(e.step("Swish", Elementwise(_swish, alpha=alpha), e.inputs[0], attrs={"alpha": alpha})))


def _no_activation(node) -> None:
    """A fused activation is split into its own node before conversion (importing/split_fused.py); one
    left here is of a kind that module does not know."""
    activation = text_attribute(node, "activation", "")
    if activation:
        raise NotImplementedError(f"{node.op_type} activation {activation!r} is not supported")


@register("FusedConv", 1, domain=MICROSOFT)
def convert_fused_conv(node, graph):
    """Conv(X, W, B) + Z: a Conv (a torch ConvNd for a constant weight) and an Add (its activation, if
    any, is a node of its own by now: importing/split_fused.py)."""
    _no_activation(node)
    attrs = {k: v for k, v in node.attributes.items() if k not in ("activation", "activation_params")}
    names = node.input_values
    e = Expansion(_n_inputs(node))
    if names[1] in graph.initializers and (not _given(node, 2) or names[2] in graph.initializers):
        bias = graph.initializers[names[2]].to_torch() if _given(node, 2) else None
        y = e.step("Conv", constant_conv(attrs, "Conv", graph.initializers[names[1]].to_torch(), bias), e.inputs[0],
                   attrs=attrs)
    else:
        y = e.step("Conv", Conv(attrs), *e.inputs[:3], attrs=attrs)
    if _given(node, 3):
        y = e.step("Add", Add(), y, e.inputs[3])
    return result(node, e.build(y))


class FusedMatMul(nn.Module):
    """alpha · op(A) @ op(B), op a transpose of the last two axes where transA/transB say."""

    def __init__(self, alpha: float, trans_a: bool, trans_b: bool):
        super().__init__()
        self.alpha, self.trans_a, self.trans_b = alpha, trans_a, trans_b

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        a = a.transpose(-1, -2) if self.trans_a and a.dim() > 1 else a
        b = b.transpose(-1, -2) if self.trans_b and b.dim() > 1 else b
        y = a @ b
        return y if self.alpha == 1.0 else y * self.alpha


@register("FusedMatMul", 1, domain=MICROSOFT)
def convert_fused_matmul(node, graph):
    """A MatMul (linear in each operand, the Shapley product when both vary)."""
    attrs = node.attributes
    if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
        raise NotImplementedError("FusedMatMul with transBatchA/transBatchB is not supported")
    e = Expansion(2)
    module = FusedMatMul(float(attrs.get("alpha", 1.0)), bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0)))
    return result(node, e.build(e.step("MatMul", module, *e.inputs)))


@register("SkipLayerNormalization", 1, domain=MICROSOFT)
def convert_skip_layer_normalization(node, graph):
    """LayerNorm(input + skip (+ bias)) over the last axis; output 3 is the sum itself."""
    _used_outputs(node, [0, 3])
    epsilon = node.attributes.get("epsilon", 1e-12)
    e = Expansion(_n_inputs(node))
    total = e.step("Add", Add(), e.inputs[0], e.inputs[1])
    if _given(node, 4):
        total = e.step("Add", Add(), total, e.inputs[4])
    beta = e.inputs[3] if _given(node, 3) else None
    y = e.step("LayerNormalization", LayerNormalization(-1, epsilon), total, e.inputs[2], beta,
               attrs={"axis": -1, "epsilon": epsilon})
    outputs = len(node.output_values)
    return result(node, e.build(y if outputs == 1 else [y, None, None, total][:outputs]))


class Mul(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a * b


class MeanSquare(nn.Module):
    """The mean of x·x over the axes from `axis` on, kept as size-1 axes; x·x is its own step (a Mul)."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, square: Tensor) -> Tensor:
        start = self.axis % square.dim()
        return square.mean(dim=tuple(range(start, square.dim())), keepdim=True)


def _rms_normalized(e: Expansion, x: fx.Node, scale: fx.Node, axis: int, epsilon: float) -> fx.Node:
    """x · 1/sqrt(mean(x²) + epsilon) · scale, as onnxruntime's SimplifiedLayerNormalization computes
    it (float32), each step an ordinary op: Mul, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul."""
    square = e.step("Mul", Mul(), x, x)
    mean = e.step("ReduceMean", MeanSquare(axis), square, attrs={"axes": [axis], "keepdims": 1})
    shifted = e.step("Add", Elementwise(torch.add, other=epsilon), mean)
    inverse = e.step("Reciprocal", Elementwise(torch.reciprocal), e.step("Sqrt", Elementwise(torch.sqrt), shifted))
    return e.step("Mul", Mul(), e.step("Mul", Mul(), x, inverse), scale)


@register("SimplifiedLayerNormalization", 1)
def convert_simplified_layer_normalization(node, graph):
    """RMS normalization (onnxruntime's, in the ai.onnx domain): x / sqrt(mean(x²) + epsilon) · scale."""
    _used_outputs(node, [0])
    if int(node.attributes.get("stash_type", 1)) != 1:
        raise NotImplementedError("SimplifiedLayerNormalization with stash_type other than float32 is not supported")
    e = Expansion(2)
    y = _rms_normalized(e, e.inputs[0], e.inputs[1], int(node.attributes.get("axis", -1)),
                        float(node.attributes.get("epsilon", 1e-5)))
    return result(node, e.build(y))


@register("SkipSimplifiedLayerNormalization", 1, domain=MICROSOFT)
def convert_skip_simplified_layer_normalization(node, graph):
    """RMS normalization of input + skip (+ bias) over the last axis; output 3 is the sum itself."""
    _used_outputs(node, [0, 3])
    e = Expansion(_n_inputs(node))
    total = e.step("Add", Add(), e.inputs[0], e.inputs[1])
    if _given(node, 3):
        total = e.step("Add", Add(), total, e.inputs[3])
    y = _rms_normalized(e, total, e.inputs[2], -1, float(node.attributes.get("epsilon", 1e-12)))
    outputs = len(node.output_values)
    return result(node, e.build(y if outputs == 1 else [y, None, None, total][:outputs]))


@register("FusedGemm", 1, domain=MICROSOFT)
def convert_fused_gemm(node, graph):
    """Gemm(A, B, C) (its activation, if any, is a node of its own by now: importing/split_fused.py)."""
    from onnx_attr.importing.converters.linear import Gemm

    _no_activation(node)
    attrs = node.attributes
    gemm = Gemm(float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0)), bool(attrs.get("transA", 0)),
                bool(attrs.get("transB", 0)))
    e = Expansion(_n_inputs(node))
    y = e.step("Gemm", gemm, *e.inputs, attrs={k: attrs[k] for k in ("alpha", "beta", "transA", "transB") if k in attrs})
    return result(node, e.build(y))


def _integer_to_float(e: Expansion, a, b, a_scale, b_scale, a_zero, b_zero, bias) -> fx.Node:
    """(A - a_zero) @ (B - b_zero) in int32, as float, times a_scale·b_scale (+ bias): the steps
    onnxruntime's quantizer writes for a dynamically quantized MatMul (MatMulInteger, Cast, Mul, Add),
    which DeepLift's rewrite takes as one quantized block (rules/quantized.py)."""
    from onnx_attr.importing.converters.cast import Cast
    from onnx_attr.importing.converters.matrix import MatMulInteger

    product = e.step("MatMulInteger", MatMulInteger(), a, b, a_zero, b_zero)
    floats = e.step("Cast", Cast(torch.float32), product, attrs={"to": 1})
    y = e.step("Mul", Mul(), floats, e.step("Mul", Mul(), a_scale, b_scale))
    return y if bias is None else e.step("Add", Add(), y, bias)


@register("MatMulIntegerToFloat", 1, domain=MICROSOFT)
def convert_matmul_integer_to_float(node, graph):
    """(A - a_zero) @ (B - b_zero) · (a_scale · b_scale) + bias, from 8-bit A and B."""
    e = Expansion(_n_inputs(node))
    given = [e.inputs[i] if _given(node, i) else None for i in range(7)]
    a, b, a_scale, b_scale, a_zero, b_zero, bias = given
    return result(node, e.build(_integer_to_float(e, a, b, a_scale, b_scale, a_zero, b_zero, bias)))


@register("DynamicQuantizeMatMul", 1, domain=MICROSOFT)
def convert_dynamic_quantize_matmul(node, graph):
    """A quantized to uint8 over its own range (DynamicQuantizeLinear), then MatMulIntegerToFloat with
    the 8-bit B."""
    from onnx_attr.importing.converters.quantize import DynamicQuantizeLinear

    e = Expansion(_n_inputs(node))
    b, b_scale = e.inputs[1], e.inputs[2]
    b_zero = e.inputs[3] if _given(node, 3) else None
    bias = e.inputs[4] if _given(node, 4) else None
    quantized = e.step("DynamicQuantizeLinear", DynamicQuantizeLinear(), e.inputs[0])
    q, a_scale, a_zero = (e.item(quantized, i) for i in range(3))
    return result(node, e.build(_integer_to_float(e, q, b, a_scale, b_scale, a_zero, b_zero, bias)))


def unpack_bits(packed: Tensor, bits: int, count: int) -> Tensor:
    """uint8 [..., B] holding 8 / bits values per byte, the first in the lowest bits (MatMulNBits' packing)
    -> int16 [..., count], the first `count` of them."""
    shifts = torch.arange(0, 8, bits, dtype=torch.int16, device=packed.device)
    values = (packed.to(torch.int16).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


def nbits_weight(b: Tensor, scales: Tensor, zero: Optional[Tensor], k: int, n: int, bits: int,
                 block_size: int) -> Tensor:
    """MatMulNBits' weight as the float [K, N] it stands for: each block of `block_size` values along K,
    (q - zero) · scale with its own scale and zero point (2^(bits-1) when none is given; 8-bit packed
    like B, or floats)."""
    blocks = -(-k // block_size)
    q = unpack_bits(b.reshape(n, blocks, -1), bits, block_size)  # [N, blocks, block_size]
    if zero is None:
        zero = torch.full((n, blocks), 1 << (bits - 1), dtype=torch.int16)
    elif zero.dtype == torch.uint8:
        zero = unpack_bits(zero.reshape(n, -1), bits, blocks)
    else:
        zero = zero.reshape(n, blocks)
    scale = scales.reshape(n, blocks)
    weight = (q.to(scale.dtype) - zero.to(scale.dtype).unsqueeze(-1)) * scale.unsqueeze(-1)
    return weight.reshape(n, blocks * block_size)[:, :k].t().contiguous()


@register("MatMulNBits", 1, domain=MICROSOFT)
def convert_matmul_nbits(node, graph):
    """A @ W (+ bias) with W quantized to 2, 4 or 8 bits in blocks along K (onnxruntime's weight-only
    quantizer, MatMulNBitsQuantizer): W dequantized once at import, then a MatMul by a constant,
    linear in A. Its quantized values are constants, so nothing is lost: the float product is the op."""
    names, attrs = node.input_values, node.attributes
    k, n, bits, block_size = (int(attrs[key]) for key in ("K", "N", "bits", "block_size"))
    if int(attrs.get("weight_prepacked", 0)):
        raise NotImplementedError("MatMulNBits with weight_prepacked (a GPU layout) is not supported")
    if _given(node, 4):
        raise NotImplementedError("MatMulNBits with g_idx (deprecated: act-order) is not supported")
    constant = [i for i in (1, 2, 3, 5) if _given(node, i)]
    if any(names[i] not in graph.initializers for i in constant):
        raise NotImplementedError("MatMulNBits with weights, scales or zero points computed in the graph is not "
                                  "supported")
    value = {i: graph.initializers[names[i]].to_torch() for i in constant}
    if value[1].numel() == 0:
        raise NotImplementedError("MatMulNBits with an omitted (empty) weight is not supported")
    weight = nbits_weight(value[1], value[2], value.get(3), k, n, bits, block_size)
    e = Expansion(1)
    return result(node, e.build(e.step("MatMul", Projection(weight, value.get(5)), e.inputs[0])), inputs=(names[0],))


class Projection(nn.Module):
    """x @ W (+ b) with a constant weight and bias: Attention's packed Q/K/V projection."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor]):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class SplitLast(nn.Module):
    """Split the last axis into the given sizes."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.sizes = sizes

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.split(x, self.sizes, -1))


class KeyMask(nn.Module):
    """onnxruntime's attention masks as one additive bias [batch or 1, 1 or heads, q, kv]:
    `mask_filter_value` where a key mask holds 0 (2-D [batch, kv] or 3-D [batch, q, kv]), plus
    an optional additive attention bias. Built from the masks alone: no attribution flows here."""

    def __init__(self, filter_value: float):
        super().__init__()
        self.filter_value = filter_value

    def forward(self, mask: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
        dtype = bias.dtype if bias is not None and bias.is_floating_point() else torch.float32
        device = (mask if mask is not None else bias).device
        out = torch.zeros((), dtype=dtype, device=device)
        if mask is not None:
            keep = mask.to(dtype)
            keep = keep[:, None, None, :] if mask.dim() == 2 else keep[:, None, :, :]
            out = out + (1 - keep) * self.filter_value
        return out if bias is None else out + bias


class LengthMask(nn.Module):
    """A 1-D mask_index (valid key count per batch, right padding) as a 2-D keep mask:
    position < length, a comparison (structural: it reads only x's length)."""

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return (positions[None, :] < lengths.reshape(-1, 1)).to(torch.int32)


def _core(e: Expansion, q, k, v, mask, attention_bias, node, heads: int, causal: bool) -> fx.Node:
    """Scaled dot-product attention over [batch, seq, heads·size] q/k/v, with the additive mask."""
    filter_value = float(node.attributes.get("mask_filter_value", -10000.0))
    additive = None
    if mask is not None or attention_bias is not None:
        additive = e.step("Cast", KeyMask(filter_value), mask, attention_bias)
    attrs = {"q_num_heads": heads, "kv_num_heads": heads, "is_causal": int(causal)}
    scale = node.attributes.get("scale")
    if scale:
        attrs["scale"] = float(scale)
    args = (q, k, v) if additive is None else (q, k, v, additive)
    return e.step("Attention", Attention(attrs, 1), *args, attrs=attrs)


@register("Attention", 1, domain=MICROSOFT)
def convert_attention(node, graph):
    """Self-attention with a packed Q/K/V projection: X @ W + b, split, then ONNX's Attention."""
    names = node.input_values
    _refuse_cache_and_rotary(node, past=4, more=((6, "past_sequence_length"), (7, "rotary/past inputs")))
    if names[1] not in graph.initializers or (_given(node, 2) and names[2] not in graph.initializers):
        raise NotImplementedError("Attention with weights or bias computed in the graph is not supported")
    weight = graph.initializers[names[1]].to_torch()
    bias = graph.initializers[names[2]].to_torch() if _given(node, 2) else None
    e = Expansion(_n_inputs(node))
    packed = e.step("MatMul", Projection(weight, bias), e.inputs[0])
    sizes = list(node.attributes.get("qkv_hidden_sizes", [weight.shape[1] // 3] * 3))
    return result(node, e.build(_self_attention(e, node, graph, packed, sizes, mask=3, attention_bias=5)))


@register("QAttention", 1, domain=MICROSOFT)
def convert_quantized_attention(node, graph):
    """Attention whose packed projection is an 8-bit product (onnxruntime's dynamic quantizer): the
    input, quantized over its own range by a DynamicQuantizeLinear before it, times the 8-bit weight,
    as MatMulInteger, Cast, Mul by the two scales and Add of the float bias (a block DeepLift's
    rewrite takes as one, rules/quantized.py); then the same attention as Attention's."""
    _refuse_cache_and_rotary(node, past=8)
    names = node.input_values
    if names[1] not in graph.initializers:
        raise NotImplementedError("QAttention with a weight computed in the graph is not supported")
    e = Expansion(_n_inputs(node))
    given = [e.inputs[i] if _given(node, i) else None for i in range(8)]
    x, w, bias, x_scale, w_scale, _, x_zero, w_zero = given
    packed = _integer_to_float(e, x, w, x_scale, w_scale, x_zero, w_zero, bias)
    width = graph.initializers[names[1]].to_torch().shape[1]
    sizes = list(node.attributes.get("qkv_hidden_sizes", [width // 3] * 3))
    return result(node, e.build(_self_attention(e, node, graph, packed, sizes, mask=5, attention_bias=None)))


def _refuse_cache_and_rotary(node, past: int, more: Sequence[tuple[int, str]] = ()) -> None:
    _used_outputs(node, [0])
    for index, what in ((past, "past"), *more):
        if _given(node, index):
            raise NotImplementedError(f"{node.operation_type} with {what} (a key/value cache) is not supported")
    if node.attributes.get("do_rotary", 0):
        raise NotImplementedError(f"{node.operation_type} with do_rotary is not supported")


def _self_attention(e: Expansion, node, graph, packed: fx.Node, sizes: list[int], mask: int,
                    attention_bias: Optional[int]) -> fx.Node:
    """The attention of a packed [q | k | v] projection of the input: split, then the scaled
    dot-product with the mask index at input `mask` (1-D lengths, or a 2-D/3-D 0/1 mask)."""
    parts = e.step("Split", SplitLast(sizes), packed)
    q, k, v = (e.item(parts, i) for i in range(3))
    keys = None
    if _given(node, mask):
        keys = e.inputs[mask]
        info = graph.value_info.get(node.input_values[mask])
        rank = len(info.type.tensor_type.shape.dim) if info is not None and info.type.tensor_type.HasField("shape") \
            else None
        if rank == 1:
            keys = e.step("Less", LengthMask(), q, keys)
        elif rank not in (2, 3):
            raise NotImplementedError(f"{node.operation_type}'s mask_index must be 1-D lengths, or a 2-D or 3-D "
                                      "0/1 mask")
    extra = e.inputs[attention_bias] if attention_bias is not None and _given(node, attention_bias) else None
    heads = int(node.attributes["num_heads"])
    return _core(e, q, k, v, keys, extra, node, heads, bool(node.attributes.get("unidirectional", 0)))


@register("MultiHeadAttention", 1, domain=MICROSOFT)
def convert_multi_head_attention(node, graph):
    """Attention over separate 3-D query, key and value [batch, seq, hidden] (+ a packed [3·hidden]
    bias), with an optional 2-D key padding mask and additive attention bias."""
    _used_outputs(node, [0])
    for index, what in ((6, "past_key"), (7, "past_value")):
        if _given(node, index):
            raise NotImplementedError(f"MultiHeadAttention with {what} (a key/value cache) is not supported")
    if not (_given(node, 1) and _given(node, 2)):
        raise NotImplementedError("MultiHeadAttention with packed query/key/value is not supported")
    heads = int(node.attributes["num_heads"])
    e = Expansion(_n_inputs(node))
    q, k, v = e.inputs[:3]
    if _given(node, 3):
        parts = e.step("Split", SplitThirds(), e.inputs[3])
        q, k, v = (e.step("Add", Add(), t, e.item(parts, i)) for i, t in enumerate((q, k, v)))
    mask = e.inputs[4] if _given(node, 4) else None
    attention_bias = e.inputs[5] if _given(node, 5) else None
    y = _core(e, q, k, v, mask, attention_bias, node, heads, bool(node.attributes.get("unidirectional", 0)))
    return result(node, e.build(y))


class SplitThirds(nn.Module):
    """A packed [q | k | v] bias split in three equal parts."""

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.chunk(x, 3, -1))
