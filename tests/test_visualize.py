"""Pictures: colours that mean what the legend says, the right kind for each input, and the CLI's
--plot for tabular and token inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import onnx_attr
from onnx_attr.cli import main
from onnx_attr.visualize import BLUE, RED, bars_png, image_png, picture_kind, plot, signed_colors, tokens_html

from conftest import SAMPLES
from exporting import TokenBag, to_onnx


def test_signed_colours_are_white_at_zero_red_up_blue_down():
    colors = signed_colors(np.array([-2.0, 0.0, 1.0, 2.0]))
    assert colors[0].tolist() == BLUE.tolist() and colors[3].tolist() == RED.tolist()
    assert colors[1].tolist() == [255, 255, 255]
    assert colors[2].tolist() == [round(255 - 0.5 * (255 - c)) for c in RED]


def test_image_picture_has_four_panels_and_the_peak_in_red(tmp_path):
    attribution = np.zeros((1, 8, 8))
    attribution[0, 2, 5] = 3.0
    attribution[0, 6, 1] = -1.0
    path = image_png(tmp_path / "x.png", attribution, np.random.default_rng(0).random((1, 8, 8)), title="t")
    picture = np.asarray(Image.open(path).convert("RGB"))
    panel = 192  # 8 px upscaled by 24
    assert picture.shape[1] == 4 * (panel + 12) + 12
    top = 22 + 16
    signed_left = 12 + (panel + 12)
    assert picture[top + 2 * 24 + 12, signed_left + 5 * 24 + 12].tolist() == RED.tolist()
    assert picture[top + 6 * 24 + 12, signed_left + 1 * 24 + 12][2] > picture[top + 6 * 24 + 12, signed_left + 24][0]


def test_bars_sort_by_magnitude_and_check_names(tmp_path):
    path = bars_png(tmp_path / "b.png", np.array([0.1, -3.0, 2.0]), ["a", "b", "c"], np.array([1.0, 2.0, 3.0]))
    assert Image.open(path).size[1] == 8 + 18 * 3 + 30
    with pytest.raises(onnx_attr.InputError, match="2 feature names for 3 features"):
        bars_png(tmp_path / "c.png", np.array([0.1, -3.0, 2.0]), ["a", "b"])


def test_tokens_html_escapes_and_colours(tmp_path):
    page = tokens_html(tmp_path / "t.html", np.array([1.0, -1.0]), ["<b>", "ok"]).read_text()
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<p")[1]
    assert f"rgb({RED[0]},{RED[1]},{RED[2]})" in page and f"rgb({BLUE[0]},{BLUE[1]},{BLUE[2]})" in page


def test_plot_picks_the_kind_from_shape_and_dtype(tmp_path):
    assert picture_kind((4, 3, 16, 16), False) == "image" and picture_kind((4, 30), False) == "bars"
    assert picture_kind((4, 12), True) == "tokens" and picture_kind((4, 3, 200, 2), False) is None
    assert plot(tmp_path / "a", np.ones((3, 8, 8)), np.ones((3, 8, 8))).suffix == ".png"
    assert plot(tmp_path / "b", np.ones(5), np.arange(5)).suffix == ".html"
    assert plot(tmp_path / "c", np.ones(5), np.ones(5)).name == "c.png"


def test_cli_plot_writes_bar_charts_with_feature_names(tmp_path):
    out = tmp_path / "run"
    names = SAMPLES / "breast_cancer_mlp_inputs.json"
    assert main(["attribute", str(SAMPLES / "breast_cancer_mlp.onnx"), "--input",
                 str(SAMPLES / "breast_cancer_mlp_inputs.npz"), "--plot", "--feature-names", str(names),
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sum(f.startswith("bars_features_") for f in report["files"]) == 8
    assert Image.open(out / "bars_features_0.png").size[0] > 600


def test_cli_bad_feature_names_exit_2(tmp_path, capsys):
    bad = tmp_path / "names.json"
    bad.write_text('{"feature_names": 3}')
    assert main(["attribute", str(SAMPLES / "breast_cancer_mlp.onnx"), "--input",
                 str(SAMPLES / "breast_cancer_mlp_inputs.npz"), "--plot", "--feature-names", str(bad),
                 "--out", str(tmp_path / "run")]) == 2
    assert "expected a JSON list of strings" in capsys.readouterr().err


def test_cli_plot_writes_token_pages_for_token_ids(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "bag.onnx"
    model.write_bytes(to_onnx(TokenBag(30).eval(), torch.randint(0, 30, (2, 5)), input_names=("ids",)))
    np.savez(tmp_path / "ids.npz", ids=np.random.default_rng(0).integers(1, 30, (2, 5)))
    out = tmp_path / "run"
    assert main(["attribute", str(model), "--input", str(tmp_path / "ids.npz"), "--plot", "--out", str(out)]) == 0
    page = (out / "tokens_ids_0.html").read_text()
    assert page.count("<span") == 5
    with np.load(out / "attributions.npz") as data:
        assert data["ids"].shape == (2, 5)
