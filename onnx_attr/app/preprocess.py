"""Image files (PNG, JPEG) as model inputs, with every step that turns pixels into numbers stated.

A result has to say exactly how its input was made, or a resume could mix numbers of two
pipelines. The steps, in this order, are those of the usual torchvision and Keras pipelines:

1. decode with Pillow, converted to RGB (or to grey, "L", for a one-channel model);
2. resize: with `resize`, the shorter side to `resize` pixels (aspect kept), then a centre crop
   to `size`, both as torchvision's Resize(int) and CenterCrop compute them on a PIL image;
   without it, straight to `size` (height, width) when the image differs from it; where the
   model fixes one side only (a text-line recogniser's [N, 1, 48, W]), to that side with the
   aspect kept, the other side rounded (`size` holds None for it), as OCR pipelines resize a line;
3. channel order: BGR reverses RGB;
4. value = pixel * scale, then (value - mean[c]) / std[c] per channel (mean and std in scaled
   units, so torchvision's ImageNet figures go with scale 1/255);
5. layout: NCHW, NHWC, or NHW (grey, no channel axis), and the model's dtype.

What the user does not give is taken from the model's input where it is static (layout from
where the 1 or 3 channels sit, size from the height and width). `to_dict` is what reports and
manifests record, so a resume with other preprocessing is refused.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from onnx_attr.errors import InputError
from onnx_attr.importing.input_files import InputWarning
from onnx_attr.importing.specs import TensorSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("NCHW", "NHWC", "NHW")
CHANNELS = ("RGB", "BGR", "L")
RESAMPLING = ("bilinear", "bicubic", "nearest", "lanczos")
#: A preprocessing file is a few lines of JSON; anything larger is a mistake.
MAX_PREPROCESSING_BYTES = 64 * 1024
#: Largest decoded image (pixels) accepted: a 16k x 16k photo; more is refused before decoding.
MAX_IMAGE_PIXELS = 16384 * 16384
_FIELDS = ("size", "resize", "layout", "channels", "scale", "mean", "std", "dtype", "resample")


class PixelRangeWarning(InputWarning):
    """Image pixels reached a floating input unscaled (0..255)."""


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image file becomes one example of a model input; None fields are taken from the model."""

    size: Optional[tuple[Optional[int], Optional[int]]] = None  # (height, width) fed to the model; a None
    # side (taken from a model that fixes only the other) follows each image's aspect ratio
    resize: Optional[int] = None  # shorter side before the centre crop; None: resize straight to `size`
    layout: Optional[str] = None
    channels: Optional[str] = None
    scale: float = 1.0
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    dtype: Optional[str] = None
    resample: str = "bilinear"

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @property
    def channel_count(self) -> int:
        return 1 if self.channels == "L" else 3

    def resolved(self, spec: TensorSpec) -> "ImagePreprocessing":
        """Every field filled in from the model's input `spec`, and checked against it."""
        dims = spec.shape
        if dims is None or len(dims) not in (3, 4):
            raise InputError(f"input {spec.name!r} has shape {spec.describe()}: image files feed an input of rank 4 "
                             "(NCHW or NHWC) or 3 (NHW, grey)")
        layout = self.layout or _layout_of(dims, spec)
        if (len(dims) == 3) != (layout == "NHW"):
            raise InputError(f"--layout {layout} does not fit input {spec.name!r} of rank {len(dims)} "
                             f"({spec.describe()})")
        axis = {"NCHW": 1, "NHWC": 3, "NHW": None}[layout]
        declared = dims[axis] if axis is not None else 1
        channels = self.channels or ("L" if declared == 1 else "RGB")
        count = 1 if channels == "L" else 3
        if isinstance(declared, int) and declared != count:
            if self.layout is not None and declared not in (1, 3):  # the layout asked for misplaces the channels
                try:
                    found = _layout_of(dims, spec)
                except InputError:
                    found = layout
                hint = f"; its layout is {found}: leave --layout out" if found != layout else ""
                raise InputError(f"--layout {layout} reads the channels of input {spec.name!r} on axis {axis}, "
                                 f"which is {declared} long ({spec.describe()}){hint}")
            given = f"--channels {channels} gives" if self.channels else f"an {channels} image has"
            raise InputError(f"{given} {count} channel(s), input {spec.name!r} takes {declared} "
                             f"({spec.describe()}, layout {layout})")
        hw = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
        static = tuple(hw) if all(isinstance(d, int) for d in hw) else None
        size = self.size or static
        one_side = [d if isinstance(d, int) and d > 0 else None for d in hw]
        if size is None and self.resize is None and one_side.count(None) >= 1:
            # the other side follows the image's aspect ratio (a text line at height 48); with neither side
            # fixed (a fully convolutional segmenter) the image is fed at its own size
            size = tuple(one_side)
        if size is None:
            raise InputError(f"input {spec.name!r} ({spec.describe()}) has no fixed height and width: give the size "
                             "the model expects with --image-size HxW")
        if static is not None and tuple(size) != static:
            raise InputError(f"--image-size {size[0]}x{size[1]} differs from the {static[0]}x{static[1]} input "
                             f"{spec.name!r} takes ({spec.describe()})")
        if self.resize is not None and None in size:
            raise InputError(f"--resize crops to --image-size: give both its sides (input {spec.name!r} is "
                             f"{spec.describe()})")
        if self.resize is not None and self.resize < min(size):
            raise InputError(f"--resize {self.resize} is smaller than the crop {size[0]}x{size[1]}; resize the shorter "
                             "side to at least the crop's size")
        dtype = self.dtype or (str(spec.dtype) if spec.dtype is not None else "float32")
        done = replace(self, size=tuple(None if s is None else int(s) for s in size), layout=layout,
                       channels=channels, dtype=dtype)
        done.check(count)
        return done

    def check(self, count: Optional[int] = None) -> None:
        """Values a pipeline cannot run with are refused by option name."""
        if self.layout is not None and self.layout not in LAYOUTS:
            raise InputError(f"--layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if self.channels is not None and self.channels not in CHANNELS:
            raise InputError(f"--channels {self.channels!r}: use one of {', '.join(CHANNELS)}")
        if self.resample not in RESAMPLING:
            raise InputError(f"--resample {self.resample!r}: use one of {', '.join(RESAMPLING)}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"--scale {self.scale!r}: give a finite number > 0 (e.g. 0.00392156862745098 for 1/255)")
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if values is None:
                continue
            if count is not None and len(values) not in (1, count):
                raise InputError(f"{name} gives {len(values)} values; give 1, or one per channel ({count})")
            if not all(np.isfinite(v) for v in values) or (name == "--std" and any(v <= 0 for v in values)):
                raise InputError(f"{name} {list(values)}: give finite numbers" + (" > 0" if name == "--std" else ""))
        if self.size is not None and (len(self.size) != 2 or any(s is not None and s < 1 for s in self.size)):
            raise InputError(f"--image-size {self.size!r}: give HxW (or one number for a square), each >= 1")
        if self.resize is not None and self.resize < 1:
            raise InputError(f"--resize {self.resize!r}: give a number of pixels >= 1")
        if self.dtype is not None:
            try:
                kind = np.dtype(self.dtype)
            except TypeError as err:
                raise InputError(f"dtype {self.dtype!r} is not a numpy dtype") from err
            normalised = self.scale != 1.0 or self.mean is not None or self.std is not None
            if not np.issubdtype(kind, np.floating) and normalised:
                raise InputError(f"the model takes {kind} pixels: --scale, --mean and --std apply to floating "
                                 "inputs only")


    def unscaled(self, spec: TensorSpec) -> Optional[str]:
        """Why a floating input fed raw 0..255 pixels deserves a look (None: it was scaled or
        normalised, or takes integers): the default scale 1 is right only for a model that
        normalises inside its graph, and most exports expect 0..1 or standardised values."""
        if self.scale != 1.0 or self.mean is not None or self.std is not None:
            return None
        if self.dtype is not None and not np.issubdtype(np.dtype(self.dtype), np.floating):
            return None
        return (f"input {spec.name!r} gets raw pixel values 0..255 (scale 1, no mean or std given): right for a model "
                "that normalises inside its graph; if it expects 0..1 give --scale 1/255, and --mean/--std (or a "
                "--preprocessing file) for standardised inputs")


def _layout_of(dims: Sequence[Any], spec: TensorSpec) -> str:
    if len(dims) == 3:
        return "NHW"
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    if first and not (last and dims[1] == 1 and dims[3] == 3):
        return "NCHW"
    if last:
        return "NHWC"
    raise InputError(f"cannot tell the layout of input {spec.name!r} ({spec.describe()}): give --layout NCHW or NHWC")


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224), '224x192' -> (224, 192) (height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError as err:
        raise InputError(f"--image-size {text!r}: give HxW (e.g. 224x224) or one number for a square") from err
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise InputError(f"--image-size {text!r}: give HxW (e.g. 224x224) or one number for a square")
    return values  # type: ignore[return-value]


def parse_numbers(text: str, option: str) -> tuple[float, ...]:
    """'0.485,0.456,0.406' -> a tuple of floats; a fraction such as 1/255 is taken too."""
    try:
        return tuple(_number(t) for t in text.split(","))
    except (ValueError, ZeroDivisionError) as err:
        raise InputError(f"{option} {text!r}: give comma-separated numbers, e.g. 0.485,0.456,0.406") from err


def _number(text: str) -> float:
    if "/" in text:
        top, bottom = text.split("/", 1)
        return float(top) / float(bottom)
    return float(text)


def image_preprocessing(path: Optional[str] = None, **options: Any) -> ImagePreprocessing:
    """The preprocessing of a JSON file (`path`, keys as `ImagePreprocessing`'s fields) with the
    options given on the command line (None: not given) laid over it."""
    fields: dict[str, Any] = read_preprocessing_file(path) if path is not None else {}
    unknown = sorted(set(options) - set(_FIELDS))
    if unknown:
        raise TypeError(f"unknown preprocessing options {unknown}")
    fields.update({k: v for k, v in options.items() if v is not None})
    for key in ("mean", "std"):
        if fields.get(key) is not None:
            fields[key] = tuple(float(v) for v in fields[key])
    if fields.get("size") is not None:
        fields["size"] = tuple(None if v is None else int(v) for v in fields["size"])
    prep = ImagePreprocessing(**fields)
    prep.check()
    return prep


def read_preprocessing_file(path: str) -> dict[str, Any]:
    """A small JSON object of preprocessing fields, read with the bounds of every user file."""
    from onnx_attr.app.names import read_bounded_text

    text = read_bounded_text(path, "--preprocessing", MAX_PREPROCESSING_BYTES, "a preprocessing file")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InputError(f"--preprocessing {path!r} is not JSON ({err}); give an object such as "
                         '{"size": [224, 224], "scale": 0.00392156862745098, "mean": [0.485, 0.456, 0.406]}') from err
    if not isinstance(data, dict):
        raise InputError(f"--preprocessing {path!r} holds a {type(data).__name__}; give a JSON object of "
                         f"{', '.join(_FIELDS)}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise InputError(f"--preprocessing {path!r} has unknown key(s) {unknown}; the keys are {', '.join(_FIELDS)}")
    checks = {"size": _int_list, "resize": _int, "layout": _str, "channels": _str, "scale": _float,
              "mean": _float_list, "std": _float_list, "dtype": _str, "resample": _str}
    for key, value in data.items():
        if value is not None and not checks[key](value):
            raise InputError(f"--preprocessing {path!r}: {key} = {value!r} is not {checks[key].__doc__}")
    if isinstance(data.get("size"), int):
        data["size"] = [data["size"]] * 2
    return data


def _int(v: Any) -> bool:
    """an integer"""
    return isinstance(v, int) and not isinstance(v, bool)


def _float(v: Any) -> bool:
    """a number"""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str(v: Any) -> bool:
    """a string"""
    return isinstance(v, str)


def _int_list(v: Any) -> bool:
    """an integer or a list of two integers [height, width] (one may be null: that side keeps the aspect ratio)"""
    return _int(v) or (isinstance(v, list) and len(v) == 2 and all(_int(x) or x is None for x in v)
                       and v.count(None) < 2)


def _float_list(v: Any) -> bool:
    """a list of numbers"""
    return isinstance(v, list) and 0 < len(v) <= 4 and all(_float(x) for x in v)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_input(specs: Sequence[TensorSpec], name: Optional[str] = None) -> TensorSpec:
    """The model input that image files feed: `name`, else the one floating input of rank 3 or 4."""
    if name is not None:
        found = [s for s in specs if s.name == name]
        if not found:
            raise InputError(f"--image-input {name!r} is not an input of the model; its inputs are "
                             f"{[s.name for s in specs]}")
        return found[0]
    candidates = [s for s in specs if s.shape is not None and len(s.shape) in (3, 4)]
    if len(candidates) == 1:
        return candidates[0]
    described = ", ".join(s.describe() for s in specs)
    raise InputError(f"image files feed one input of rank 4 (NCHW/NHWC) or 3 (grey); this model's inputs are "
                     f"{described}: name the one with --image-input")


def load_image(path: str | Path, prep: ImagePreprocessing) -> tuple[np.ndarray, np.ndarray]:
    """One image file as (model values without the batch axis, the resized pixels as given:
    [3, H, W] RGB or [H, W] grey uint8, for pictures). `prep` must be resolved."""
    from PIL import Image, UnidentifiedImageError

    from onnx_attr.fileio import regular_file

    assert prep.size is not None and prep.layout is not None, "resolve the preprocessing first"
    file = regular_file(path, "image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                if opened.width * opened.height > MAX_IMAGE_PIXELS:
                    raise InputError(f"image {str(path)!r} is {opened.width}x{opened.height} pixels, more than the "
                                     f"{MAX_IMAGE_PIXELS:,} allowed")
                opened.load()
                image = opened.convert("L" if prep.channels == "L" else "RGB")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as err:
        raise InputError(f"cannot read image {str(path)!r}: {type(err).__name__}: {err}; give a readable PNG or "
                         "JPEG file") from err
    pixels = np.asarray(_resized(image, prep))
    display = pixels if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    values = pixels.astype(np.float64)
    if prep.channels == "BGR":
        values = values[..., ::-1]
    values = values * prep.scale
    if values.ndim == 3:
        if prep.mean is not None:
            values = values - np.asarray(prep.mean, dtype=np.float64)
        if prep.std is not None:
            values = values / np.asarray(prep.std, dtype=np.float64)
    else:
        values = (values - (prep.mean[0] if prep.mean else 0.0)) / (prep.std[0] if prep.std else 1.0)
    if prep.layout == "NCHW":
        values = np.moveaxis(values if values.ndim == 3 else values[..., None], -1, 0)
    elif prep.layout == "NHWC" and values.ndim == 2:
        values = values[..., None]
    dtype = np.dtype(prep.dtype)
    if not np.issubdtype(dtype, np.floating):
        values = np.rint(values)
    return np.ascontiguousarray(values.astype(dtype)), display


#: most pixels fed at an image's own size, where the model fixes neither side (4096 x 4096)
MAX_NATIVE_PIXELS = 4096 * 4096


def _resized(image, prep: ImagePreprocessing):
    from PIL import Image

    method = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
              "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}[prep.resample]
    height, width = prep.size  # type: ignore[misc]
    if height is None and width is None:  # the model fixes neither side: the image as it is, within a budget
        if image.width * image.height > MAX_NATIVE_PIXELS:
            raise InputError(f"the image is {image.height}x{image.width}, more than the {MAX_NATIVE_PIXELS:,} pixels "
                             "fed at an image's own size (the model fixes neither side, and a method multiplies "
                             "the input many times over): give the size to feed with --image-size HxW")
        return image
    if height is None:  # the model fixes the width only: the height keeps the image's aspect ratio
        height = max(1, round(image.height * width / image.width))
    if width is None:
        width = max(1, round(image.width * height / image.height))
    if prep.resize is None:
        return image if image.size == (width, height) else image.resize((width, height), method)
    short = min(image.size)  # torchvision's rule: the longer side truncated, the crop's offset rounded
    scaled = (prep.resize, int(prep.resize * image.height / short)) if image.width == short \
        else (int(prep.resize * image.width / short), prep.resize)
    if scaled != image.size:
        image = image.resize(scaled, method)
    left, top = int(round((image.width - width) / 2.0)), int(round((image.height - height) / 2.0))
    return image.crop((left, top, left + width, top + height))


__all__ = ["ImagePreprocessing", "image_preprocessing", "image_input", "load_image", "is_image_file", "parse_size",
           "parse_numbers", "IMAGE_SUFFIXES"]
