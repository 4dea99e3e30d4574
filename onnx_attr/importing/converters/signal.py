"""Fourier ops: DFT (opset 17 and 20: the axis became an input) and STFT.

ONNX carries complex values as a trailing axis of 1 (real) or 2 (real, imaginary); both ops
are linear maps of that real representation, so DeepLift takes their gradient as it is.
"""

from __future__ import annotations

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


def dft(x: torch.Tensor, length: Optional[int], axis: int, inverse: bool, onesided: bool) -> torch.Tensor:
    axis = axis % x.dim()
    if length is None:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    z = _complex(x)
    if inverse:
        out = torch.fft.irfft(z, n=length, dim=axis) if onesided else torch.fft.ifft(z, n=length, dim=axis)
    else:
        out = torch.fft.fft(z, n=length, dim=axis)
        if onesided:
            out = out.narrow(axis, 0, length // 2 + 1)
    return _real_pair(out, x.dtype)


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
