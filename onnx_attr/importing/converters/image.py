"""ImageDecoder (opset 20): encoded bytes (JPEG, PNG, BMP, TIFF, WebP, PNM, JPEG 2000) to an
HWC uint8 image, decoded by Pillow on the CPU. Its output carries no attribution: an exported
pre-processing step, not a differentiable layer."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from onnx_attr.importing.converters._common import result, text_attribute
from onnx_attr.importing.converters.registry import register


class ImageDecoder(nn.Module):
    def __init__(self, pixel_format: str):
        super().__init__()
        self.pixel_format = pixel_format

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        image = Image.open(io.BytesIO(encoded.detach().cpu().numpy().tobytes()))
        if self.pixel_format == "Grayscale":
            pixels = np.asarray(image.convert("L"))[:, :, None]
        else:
            pixels = np.asarray(image.convert("RGB"))
            if self.pixel_format == "BGR":
                pixels = pixels[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(pixels)).to(encoded.device)


@register("ImageDecoder", 20)
def convert_image_decoder(node, graph):
    pixel_format = text_attribute(node, "pixel_format", "RGB")
    if pixel_format not in ("RGB", "BGR", "Grayscale"):
        raise NotImplementedError(f"ImageDecoder pixel_format {pixel_format!r}")
    return result(node, ImageDecoder(pixel_format))
