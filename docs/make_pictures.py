"""Draw the pictures in docs/images: ours, and Captum's rendering of the same attributions beside them.

    python docs/make_pictures.py [--out docs/images]

* `digits_deeplift.png`: DeepLift on the first example of the digits sample (the README's picture);
* `compare_digits.png`: that picture above Captum's `visualize_image_attr_multiple` of the same
  attributions (original image, signed heat map, absolute heat map, blended heat map);
* `compare_224.png`: the same for a 224x224 model, a random-initialised torchvision resnet18
  exported to ONNX, on a smooth synthetic image of 0-255 pixels normalised as ImageNet models
  expect. A random network's class is meaningless; the picture is about how 50176 attributions
  of very unequal size are drawn.

Prints, for each, the colour scales: the largest |attribution|, ours (the 98th percentile of
|values|) and Captum's (the value below which 98% of the total |attribution| lies).
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx_attr  # noqa: E402
from onnx_attr.app.visualize import clip_scale, describe_target, image_figure  # noqa: E402

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def png(figure) -> "Image.Image":
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, facecolor="white")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def stacked(rows: list[tuple[str, "Image.Image"]]) -> "Image.Image":
    """The pictures one above the other, each under a caption line."""
    from PIL import Image, ImageDraw

    width = max(p.size[0] for _, p in rows)
    band = 22
    canvas = Image.new("RGB", (width, sum(p.size[1] + band for _, p in rows)), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for caption, picture in rows:
        draw.rectangle([0, y, width, y + band - 1], fill=(235, 235, 235))
        draw.text((8, y + 5), caption, fill="black")
        canvas.paste(picture, ((width - picture.size[0]) // 2, y + band))
        y += band + picture.size[1]
    return canvas


def captum_figure(attribution: np.ndarray, image01: np.ndarray):
    """Captum's four-panel rendering of [C, H, W] attributions over an [H, W, C] image in [0, 1]."""
    from captum.attr import visualization

    figure, _ = visualization.visualize_image_attr_multiple(
        np.moveaxis(attribution, 0, -1), image01,
        ["original_image", "heat_map", "heat_map", "blended_heat_map"], ["all", "all", "absolute_value", "all"],
        titles=["original_image", "heat_map (all)", "heat_map (absolute_value)", "blended_heat_map (all)"],
        show_colorbar=True, fig_size=(11, 3.3), use_pyplot=False)
    return figure


def captum_scale(attribution: np.ndarray, outlier_perc: float = 2.0) -> float:
    """Captum's clip value (its documented rule, written here to print it): sort |summed map|, the
    first value at which the running sum reaches (100 - outlier_perc)% of the total."""
    values = np.sort(np.abs(attribution.sum(0)).reshape(-1))
    total = np.cumsum(values)
    return float(values[np.searchsorted(total, total[-1] * (1 - outlier_perc / 100))])


def scales(label: str, attribution: np.ndarray) -> None:
    summed = attribution.sum(0)
    print(f"{label}: largest |attribution| {np.abs(summed).max():.4g}; ours (98th percentile of |values|) "
          f"{clip_scale(summed, 2):.4g}; Captum (98% of the total |attribution| below) {captum_scale(attribution):.4g}; "
          f"share of pixels saturated: ours {np.mean(np.abs(summed) >= clip_scale(summed, 2)):.2%}, "
          f"Captum {np.mean(np.abs(summed) >= captum_scale(attribution)):.2%}")


def title(method: str, model: str, row: np.ndarray, target: int, final: dict, names: dict, baseline: str,
          attribution: np.ndarray, delta: float) -> str:
    return "\n".join([f"{method}, {model}", describe_target(row, target, final, names),
                      f"baseline {baseline}; sum of attributions {attribution.sum():+.4g}; convergence delta "
                      f"{delta:+.2e}"])


def digits(out: Path) -> None:
    model = onnx_attr.load(ROOT / "samples" / "digits_cnn.onnx")
    with np.load(ROOT / "samples" / "digits_cnn_inputs.npz") as data:
        x = data["image"][:1]
    logits = model.run({"image": x})[0].detach().numpy()
    target = int(logits[0].argmax())
    attribution, delta = onnx_attr.DeepLift(model).attribute(x, target=target, return_convergence_delta=True)
    final = model.outputs[0].final_activation.to_dict()
    text = title("DeepLift", "digits sample, example 0", logits[0], target, final, dict(enumerate(DIGITS)), "zeros",
                 attribution[0], float(delta[0]))
    ours = image_figure(attribution[0], x[0], text)
    ours.savefig(out / "digits_deeplift.png", dpi=100, facecolor="white")
    theirs = captum_figure(attribution[0], np.moveaxis(x[0], 0, -1))
    stacked([("onnx-attr (colours clipped at the 98th percentile of |attribution|)", png(ours)),
             ("Captum on the same attributions: captum.attr.visualization.visualize_image_attr_multiple (defaults: "
              "outlier_perc=2; one channel shown in its default colour map)", png(theirs))]
            ).save(out / "compare_digits.png")
    scales("digits", attribution[0])


def smooth_image(size: int = 224) -> np.ndarray:
    """[H, W, 3] uint8: a sky-to-grass gradient, a red ball, a yellow box and a dark post, blurred."""
    from PIL import Image, ImageDraw, ImageFilter

    rows = np.linspace(0, 1, size)[:, None, None]
    sky, grass = np.array([120, 170, 230]), np.array([70, 140, 60])
    horizon = 1 / (1 + np.exp(-(rows - 0.6) * 25))
    base = ((1 - horizon) * sky + horizon * grass) * np.ones((1, size, 1))
    picture = Image.fromarray(base.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    draw.ellipse([40, 90, 110, 160], fill=(200, 40, 35))
    draw.rectangle([130, 60, 190, 120], fill=(235, 205, 50))
    draw.rectangle([150, 120, 162, 200], fill=(60, 45, 35))
    return np.asarray(picture.filter(ImageFilter.GaussianBlur(4)))


def resnet(out: Path) -> None:
    import torchvision

    sys.path.insert(0, str(ROOT / "tests"))
    from exporting import to_onnx

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    pixels = smooth_image()
    x = ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnx_attr.load(to_onnx(net, torch.from_numpy(x)))
    logits = model.run({"x": x})[0].detach().numpy()
    target = int(logits[0].argmax())
    attribution, delta = onnx_attr.DeepLift(model).attribute(x, target=target, return_convergence_delta=True)
    names = dict(enumerate(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]))
    text = title("DeepLift", "random-initialised resnet18 (ImageNet's class names), synthetic 224x224 image",
                 logits[0], target, {"op_type": "Softmax", "stripped": True}, names,
                 "zeros (the ImageNet mean colour)", attribution[0], float(delta[0]))
    ours = image_figure(attribution[0], x[0], text)
    old = image_figure(attribution[0], x[0], "the same, colours scaled to the largest |attribution| "
                       "(--clip-percentile 0, what the pictures were before)", clip_percentile=0)
    theirs = captum_figure(attribution[0], pixels / 255.0)
    stacked([("onnx-attr (colours clipped at the 98th percentile of |attribution|)", png(ours)),
             ("Captum on the same attributions: captum.attr.visualization.visualize_image_attr_multiple (defaults: "
              "outlier_perc=2)", png(theirs)),
             ("onnx-attr --clip-percentile 0", png(old))]).save(out / "compare_224.png")
    scales("resnet18 224x224", attribution[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder for the PNGs")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    digits(out)
    resnet(out)
    print(f"wrote digits_deeplift.png, compare_digits.png, compare_224.png to {out}")


if __name__ == "__main__":
    main()
