"""The ONNX Attention op (opset 23 to 25): scaled dot-product attention with grouped key/value
heads, a key/value cache, boolean or additive masks (shorter than the keys: padded as masked),
causal and sliding-window masks aligned to the cache, a per-batch count of valid keys, softcap,
the softmax's precision and the QK output modes. Fully masked query rows give 0, as the spec
says. Written from the operator's definition; checked against ONNX's node suite."""

from __future__ import annotations

import math
from typing import Optional

import torch
from onnx import helper
from torch import Tensor, nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register

NEG_INF = float("-inf")


class Attention(nn.Module):
    def __init__(self, attrs: dict, n_outputs: int):
        super().__init__()
        self.scale = attrs.get("scale")
        self.is_causal = bool(attrs.get("is_causal", 0))
        self.q_heads, self.kv_heads = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
        self.softcap = float(attrs.get("softcap", 0.0))
        self.mode = int(attrs.get("qk_matmul_output_mode", 0))
        precision = attrs.get("softmax_precision")
        self.softmax_dtype = None if precision is None else _torch_dtype(precision)
        self.left, self.right = int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1))
        self.n_outputs = n_outputs

    def _heads(self, t: Tensor, heads: Optional[int]) -> Tensor:
        """[batch, seq, heads·size] -> [batch, heads, seq, size]."""
        if heads is None:
            raise ValueError("3-D Attention inputs need the q_num_heads and kv_num_heads attributes")
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None,
                past_key: Optional[Tensor] = None, past_value: Optional[Tensor] = None,
                nonpad_kv_seqlen: Optional[Tensor] = None):
        three_d = q.dim() == 3
        if q.dtype in (torch.float16, torch.bfloat16):  # accumulate in float32, round once at the end
            wide = [None if t is None else (t.float() if t.is_floating_point() else t)
                    for t in (q, k, v, attn_mask, past_key, past_value)]
            outputs = self.forward(*wide, nonpad_kv_seqlen)
            if self.n_outputs == 1:
                return outputs.to(q.dtype)
            return tuple(o.to(q.dtype) for o in outputs)
        if three_d:
            q, k, v = self._heads(q, self.q_heads), self._heads(k, self.kv_heads), self._heads(v, self.kv_heads)
        root = torch.tensor(math.sqrt(self.scale if self.scale is not None else 1 / math.sqrt(q.shape[-1])),
                            dtype=q.dtype)
        k = k if past_key is None else torch.cat([past_key, k], 2)
        v = v if past_value is None else torch.cat([past_value, v], 2)
        present_key, present_value = k, v
        bias = self._bias(q, k.shape[2], attn_mask, past_key, nonpad_kv_seqlen)
        if q.shape[1] != k.shape[1] and q.shape[1] % k.shape[1] == 0:  # grouped heads: [h0, h0, h1, h1, ...]
            k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
        scores = (q * root) @ (k * root).transpose(-1, -2)
        if self.softcap > 0:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        biased = scores + bias
        qk = biased if self.mode == 2 else scores
        if self.softmax_dtype is not None:
            biased = biased.to(self.softmax_dtype)
        dead = torch.isneginf(bias.amax(-1, keepdim=True))  # rows with no key to attend: 0 by definition
        probs = torch.softmax(biased.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
        if self.mode == 3:
            qk = probs
        y = probs.to(q.dtype) @ v
        if three_d:
            y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
        outputs = (y, present_key, present_value, qk.to(q.dtype))
        return y if self.n_outputs == 1 else outputs[:self.n_outputs]

    def _bias(self, q: Tensor, kv_len: int, mask: Optional[Tensor], past_key: Optional[Tensor],
              nonpad: Optional[Tensor]) -> Tensor:
        """The additive mask: 0 where a query may attend a key, -inf elsewhere (broadcastable)."""
        q_len, dtype = q.shape[2], q.dtype
        zeros = torch.zeros(q_len, kv_len, dtype=dtype, device=q.device)
        if mask is not None and mask.shape[-1] < kv_len:  # keys beyond the mask are masked
            masked = False if mask.dtype == torch.bool else NEG_INF
            mask = torch.cat([mask, torch.full((*mask.shape[:-1], kv_len - mask.shape[-1]), masked,
                                               dtype=mask.dtype, device=mask.device)], -1)
        if mask is not None and mask.dtype == torch.bool:
            mask = _additive(mask, dtype)
        bias = zeros if mask is None else zeros + mask
        # where the query block starts among the keys: after the cache, or per batch before the padding
        if past_key is None and nonpad is not None:
            offset = (nonpad.reshape(-1) - q_len).reshape(-1, 1, 1, 1)
        else:
            offset = past_key.shape[2] if past_key is not None else 0
        i = torch.arange(q_len, device=q.device).reshape(-1, 1)
        j = torch.arange(kv_len, device=q.device).reshape(1, -1)
        allowed = None
        if self.is_causal:
            allowed = j <= i + offset
        if self.left >= 0 or self.right >= 0:
            distance = (i + offset) - j
            window = torch.ones_like(distance, dtype=torch.bool)
            if self.left >= 0:
                window &= distance <= self.left
            if self.right >= 0:
                window &= -distance <= self.right
            allowed = window if allowed is None else allowed & window
        if allowed is not None:
            bias = bias + _additive(allowed, dtype)
        if nonpad is not None:
            valid = torch.arange(kv_len, device=q.device) < nonpad.reshape(-1, 1)
            bias = bias + _additive(valid, dtype).reshape(-1, 1, 1, kv_len)
        return bias


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as an additive one: 0 where True, -inf where False."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, NEG_INF)


def _torch_dtype(onnx_type: int) -> torch.dtype:
    import numpy as np

    return torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(onnx_type))).dtype


@register("Attention", 23, 24, 25)
def convert_attention(node, graph):
    return result(node, Attention(dict(node.attributes), len(node.output_values)))


class RotaryEmbedding(nn.Module):
    """Rotate the first `rotary_dim` features of each head by position-dependent angles: pairs
    (x1, x2) halves (or interleaved even/odd) become (cos·x1 - sin·x2, sin·x1 + cos·x2).
    Linear in the input for given caches, which is how DeepLift treats it."""

    def __init__(self, interleaved: bool, rotary_dim: int, num_heads: int):
        super().__init__()
        self.interleaved, self.rotary_dim, self.num_heads = interleaved, rotary_dim, num_heads

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        shape = x.shape
        h = x.transpose(1, 2) if x.dim() == 4 else x.reshape(shape[0], shape[1], self.num_heads, -1)
        if position_ids is not None:
            cos, sin = cos[position_ids.long()], sin[position_ids.long()]
        cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)  # [batch, seq, 1, dim/2]
        dim = self.rotary_dim or h.shape[-1]
        rotated, kept = h[..., :dim], h[..., dim:]
        if self.interleaved:
            x1, x2 = rotated[..., 0::2], rotated[..., 1::2]
        else:
            x1, x2 = rotated.chunk(2, dim=-1)
        real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
        rotated = torch.stack((real, imag), -1).flatten(-2) if self.interleaved else torch.cat((real, imag), -1)
        out = torch.cat((rotated, kept), -1)
        return out.transpose(1, 2) if x.dim() == 4 else out.reshape(shape)


@register("RotaryEmbedding", 23)
def convert_rotary_embedding(node, graph):
    attrs = node.attributes
    return result(node, RotaryEmbedding(bool(attrs.get("interleaved", 0)), int(attrs.get("rotary_embedding_dim", 0)),
                                        int(attrs.get("num_heads", 0))))


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, H*D) -> (B, H, T, D)."""
    b, t, _ = x.shape
    return x.reshape(b, t, n, -1).transpose(1, 2)


class LinearAttention(nn.Module):
    """Recurrent linear attention (opset 27): a (d_k x d_v) state per KV head, decayed by
    exp(decay) when gated, corrected towards v by beta when a delta rule, plus k v^T each step;
    the output reads it with q (KV heads shared across query groups). Float32 inside, as the spec."""

    def __init__(self, update_rule: str, q_heads: int, kv_heads: int, scale: float):
        super().__init__()
        self.gated = update_rule in ("gated", "gated_delta")
        self.delta = update_rule in ("delta", "gated_delta")
        self.q_heads, self.kv_heads, self.scale = q_heads, kv_heads, scale

    def forward(self, query, key, value, past_state=None, decay=None, beta=None):
        if self.gated != (decay is not None) or self.delta != (beta is not None):
            raise ValueError("LinearAttention's decay/beta inputs do not match its update_rule")
        b, t, _ = query.shape
        q, k, v = (_heads(x, n).float() for x, n in ((query, self.q_heads), (key, self.kv_heads),
                                                     (value, self.kv_heads)))
        d_k, d_v = k.shape[-1], v.shape[-1]
        if decay is not None:
            decay = (decay.reshape(b, t, self.kv_heads, 1).transpose(1, 2) if decay.shape[-1] == self.kv_heads
                     else _heads(decay, self.kv_heads)).float()
        if beta is not None:
            beta = beta.reshape(b, t, beta.shape[-1], 1).transpose(1, 2).float()
        state = (past_state.float() if past_state is not None
                 else query.new_zeros((b, self.kv_heads, d_k, d_v), dtype=torch.float32))
        scale = self.scale or 1.0 / math.sqrt(d_k)
        group = self.q_heads // self.kv_heads
        outputs = []
        for i in range(t):
            k_t, v_t = k[:, :, i], v[:, :, i]
            if decay is not None:
                state = state * torch.exp(decay[:, :, i])[..., None]
            if beta is not None:
                v_t = beta[:, :, i] * (v_t - torch.einsum("bhdm,bhd->bhm", state, k_t))
            state = state + k_t[..., :, None] * v_t[..., None, :]
            shared = state.repeat_interleave(group, dim=1) if group > 1 else state
            outputs.append(scale * torch.einsum("bhd,bhdm->bhm", q[:, :, i], shared))
        out = torch.stack(outputs, 2).transpose(1, 2).reshape(b, t, self.q_heads * d_v)
        return out.to(query.dtype), state.to(past_state.dtype if past_state is not None else query.dtype)


@register("LinearAttention", 27)
def convert_linear_attention(node, graph):
    attrs = node.attributes
    rule = text_attribute(node, "update_rule", "gated_delta")
    if rule not in ("linear", "gated", "delta", "gated_delta"):
        raise NotImplementedError(f"LinearAttention update_rule {rule!r}")
    if "q_num_heads" not in attrs or "kv_num_heads" not in attrs:
        raise NotImplementedError("LinearAttention needs q_num_heads and kv_num_heads")
    return result(node, LinearAttention(rule, int(attrs["q_num_heads"]), int(attrs["kv_num_heads"]),
                                        float(attrs.get("scale", 0.0))))
