"""Fourier ops: DFT (opset 17 and 20: the axis became an input) and STFT; the window generators
(HannWindow, HammingWindow, BlackmanWindow) and MelWeightMatrix that audio front-ends exported at
opset 17 compute them with (constants of the model: no input of theirs is attributed).

ONNX carries complex values as a trailing axis of 1 (real) or 2 (real, imaginary); both ops
are linear maps of that real representation, so DeepLift takes their gradient as it is.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


def _complex(x: torch.Tensor) -> torch.Tensor:
    """(..., 1) real or (..., 2) real/imaginary -> a complex tensor without the last axis."""
    if x.shape[-1] == 1:
        return x[..., 0].to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    return torch.complex(x[..., 0], x[..., 1]) if x.dtype in (torch.float32, torch.float64) \
        else torch.complex(x[..., 0].float(), x[..., 1].float())


def _real_pair(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.view_as_real(z.contiguous()).to(dtype) if z.is_complex() else z.unsqueeze(-1).to(dtype)


#: the longest non-power-of-2 length summed term by term: its twiddles, [L/2+1, L] twice, stay under 32 MB
_DIRECT_MAX = 2048


def dft(x: torch.Tensor, length: Optional[int], axis: int, inverse: bool, onesided: bool) -> torch.Tensor:
    axis = axis % x.dim()
    if length is None:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    if length & (length - 1) and length <= _DIRECT_MAX and not (inverse and onesided) \
            and x.dtype in (torch.float32, torch.float64):
        return _direct_dft(x, length, axis, inverse, onesided)
    z = _complex(x)
    if inverse:
        out = torch.fft.irfft(z, n=length, dim=axis) if onesided else torch.fft.ifft(z, n=length, dim=axis)
    else:
        out = torch.fft.fft(z, n=length, dim=axis)
        if onesided:
            out = out.narrow(axis, 0, length // 2 + 1)
    return _real_pair(out, x.dtype)


def _direct_dft(x: torch.Tensor, length: int, axis: int, inverse: bool, onesided: bool) -> torch.Tensor:
    """A length that is not a power of 2, summed term by term with twiddles cos and sin of k·j·ω (in
    float64, k·j not reduced modulo the length, then rounded to the input's type): where an FFT's exact
    symmetries (sin πj = 0, ±1 and ±i at the quarters) cancel both parts of a bin to exact zeros, these
    leave rounding-sized values, as onnxruntime's kernel does:
    Kokoro's vocoder divides the imaginary part of its 20-point STFT by the real part, and torch's FFT
    gave 42,070 exact zeros (onnxruntime's: 3) and 29 bins of 0/0 that made every sample of its audio
    NaN (hunt 31); summed this way, it verifies."""
    rows = length // 2 + 1 if onesided else length
    angle = torch.arange(rows, dtype=torch.float64)[:, None] * torch.arange(length, dtype=torch.float64) * (
        (1.0 if inverse else -1.0) * 2 * math.pi / length)  # [rows, length]
    cos, sin = (f(angle).to(device=x.device, dtype=x.dtype) for f in (torch.cos, torch.sin))
    signal = x.movedim(axis, -2)  # [..., samples, 1|2]
    samples = signal.shape[-2]
    if samples >= length:
        signal = signal.narrow(-2, 0, length)
    else:  # zero-padded to the length
        signal = torch.cat([signal, signal.new_zeros(*signal.shape[:-2], length - samples, signal.shape[-1])], -2)
    real = signal[..., 0]
    out_real, out_imag = real @ cos.T, real @ sin.T
    if signal.shape[-1] == 2:
        imag = signal[..., 1]
        out_real, out_imag = out_real - imag @ sin.T, out_imag + imag @ cos.T
    out = torch.stack([out_real, out_imag], -1)
    if inverse:
        out = out / length
    return out.movedim(-2, axis)


class DFT(nn.Module):
    def __init__(self, axis: Optional[int], inverse: bool, onesided: bool):
        super().__init__()
        self.axis, self.inverse, self.onesided = axis, inverse, onesided

    def forward(self, x: torch.Tensor, dft_length: Optional[torch.Tensor] = None,
                axis: Optional[torch.Tensor] = None) -> torch.Tensor:
        length = None if dft_length is None else int(dft_length.reshape(-1)[0])
        dim = self.axis if self.axis is not None else (-2 if axis is None else int(axis.reshape(-1)[0]))
        return dft(x, length, dim, self.inverse, self.onesided)


@register("DFT", 17)
def convert_dft_17(node, graph):
    attrs = node.attributes
    return result(node, DFT(attrs.get("axis", 1), bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))))


@register("DFT", 20)
def convert_dft(node, graph):
    attrs = node.attributes
    return result(node, DFT(None, bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))))


class STFT(nn.Module):
    """Frames of `frame_length` every `frame_step` samples, windowed, each transformed:
    [batch, frames, bins, 2]."""

    def __init__(self, onesided: bool):
        super().__init__()
        self.onesided = onesided

    def forward(self, x: torch.Tensor, frame_step: torch.Tensor, window: Optional[torch.Tensor] = None,
                frame_length: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() == 2:  # a real signal [batch, samples] without its trailing 1, as OnnxScript writes it (onnxruntime
            x = x.unsqueeze(-1)  # takes it: onnx-asr's whisper/nemo/kaldi preprocessors)
        if frame_length is not None:
            length = int(frame_length.reshape(-1)[0])
        else:
            length = window.shape[0] if window is not None else x.shape[-2]
        frames = x.unfold(-2, length, int(frame_step.reshape(-1)[0]))  # [batch, frames, 1|2, length]
        frames = frames.transpose(-1, -2)  # [batch, frames, length, 1|2]
        if window is not None:
            frames = frames * window.to(x.dtype)[:, None]
        return dft(frames, length, -2, False, self.onesided)


@register("STFT", 17)
def convert_stft(node, graph):
    return result(node, STFT(bool(node.attributes.get("onesided", 1))))


#: cosine-sum windows: w[n] = Σ_k (-1)^k a_k cos(2πkn/N)
_WINDOWS = {"HannWindow": (0.5, 0.5), "HammingWindow": (25 / 46, 21 / 46), "BlackmanWindow": (0.42, 0.5, 0.08)}


class Window(nn.Module):
    """A cosine-sum window of `size` samples; N = size when periodic, size - 1 when symmetric."""

    def __init__(self, coefficients: tuple[float, ...], periodic: bool, dtype: torch.dtype):
        super().__init__()
        self.coefficients, self.periodic, self.dtype = coefficients, periodic, dtype

    def forward(self, size: torch.Tensor) -> torch.Tensor:
        n = int(size.reshape(()))  # its size is in the budget (budget.ESTIMATORS)
        span = n if self.periodic else n - 1
        phase = 2 * math.pi * torch.arange(n, dtype=torch.float64) / span  # 1 symmetric sample: 0/0, as onnxruntime
        window = sum((-1) ** k * a * torch.cos(k * phase) for k, a in enumerate(self.coefficients))
        return window.to(self.dtype)


def _output_type(node, default: int = 1) -> torch.dtype:
    from onnx_attr.importing.converters.cast import torch_dtype

    return torch_dtype(int(node.attributes.get("output_datatype", default)))


for _op, _coefficients in _WINDOWS.items():
    register(_op, 17)(lambda node, graph, c=_coefficients: result(
        node, Window(c, bool(node.attributes.get("periodic", 1)), _output_type(node))))


class MelWeightMatrix(nn.Module):
    """[dft_length // 2 + 1, num_mel_bins] triangles of peak 1 over num_mel_bins + 2 points on the mel
    scale (mel(f) = 2595 log10(1 + f / 700)) from lower_edge_hertz, spaced (mel(upper) - mel(lower)) /
    (num_mel_bins + 2) apart, each point on the DFT bin floor((dft_length + 1) f / sample_rate): as
    onnxruntime computes it (its spacing leaves the last point short of upper_edge_hertz)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz) -> torch.Tensor:
        mels, length, rate = (int(t.reshape(())) for t in (num_mel_bins, dft_length, sample_rate))
        low, high = (float(t.reshape(())) for t in (lower_edge_hertz, upper_edge_hertz))
        bins = length // 2 + 1  # its size is in the budget (budget.ESTIMATORS)
        if mels <= 0 or bins <= 0 or rate <= 0:
            raise ValueError(f"MelWeightMatrix with num_mel_bins {mels}, dft_length {length}, sample_rate {rate}")
        to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
        step = (to_mel(high) - to_mel(low)) / (mels + 2)  # onnxruntime's: the last point falls short of high
        points = [int((length + 1) * (700.0 * (10 ** ((to_mel(low) + i * step) / 2595.0) - 1.0)) // rate)
                  for i in range(mels + 2)]
        out = torch.zeros(bins, mels, dtype=torch.float64)
        for m in range(mels):
            left, centre, right = points[m:m + 3]
            for j in range(max(left, 0), min(centre, bins - 1) + 1):
                out[j, m] = 1.0 if centre == left else (j - left) / (centre - left)
            for j in range(max(centre, 0), min(right, bins)):
                if right > centre:
                    out[j, m] = (right - j) / (right - centre)
        return out.to(self.dtype)


@register("MelWeightMatrix", 17)
def convert_mel_weight_matrix(node, graph):
    return result(node, MelWeightMatrix(_output_type(node)))
