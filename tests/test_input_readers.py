"""Inputs users have: image files, CSV/Parquet rows with column names, text through a tokenizer.

Oracles: pixel values computed by hand for solid colours and by Pillow and numpy directly in the
test (resize, crop, channel order, layout, normalisation); the tables read back by pyarrow / the
csv module; the tokenizer called on its own; onnxruntime on the .onnx file for completeness (the
attributions of an example add up to f(x) - f(0) at its target).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
import pytest
import torch

from exporting import to_onnx
from onnx_attr import InputError, load
from onnx_attr.app.cli import main
from onnx_attr.app.preprocess import ImagePreprocessing, image_preprocessing, load_image
from onnx_attr.app.readers import InputOptions, read_input_file
from onnx_attr.importing.specs import TensorSpec

Image = pytest.importorskip("PIL.Image")

NCHW = TensorSpec("image", ("batch", 3, 8, 8), np.dtype("float32"))
NHWC = TensorSpec("image", ("batch", 8, 8, 3), np.dtype("float32"))
GREY = TensorSpec("image", ("batch", 8, 8), np.dtype("float32"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def _halves(height: int = 8, width: int = 8) -> np.ndarray:
    """Left half pure red at 200, right half pure blue at 100: shows which axis is which."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 200
    pixels[:, width // 2:, 2] = 100
    return pixels


# -- images -------------------------------------------------------------------------------------------------------

def test_solid_colour_normalised_by_hand(tmp_path):
    path = _png(tmp_path / "c.png", np.broadcast_to(np.array([200, 100, 50], np.uint8), (8, 8, 3)))
    prep = image_preprocessing(scale=1 / 255, mean=MEAN, std=STD).resolved(NCHW)
    values, display = load_image(path, prep)
    expected = [(200 / 255 - 0.485) / 0.229, (100 / 255 - 0.456) / 0.224, (50 / 255 - 0.406) / 0.225]
    assert values.shape == (3, 8, 8) and values.dtype == np.float32
    for c in range(3):
        assert np.allclose(values[c], expected[c], rtol=1e-6, atol=0)
    assert display.shape == (3, 8, 8) and display.dtype == np.uint8 and (display[:, 0, 0] == [200, 100, 50]).all()


def test_layouts_and_channel_orders(tmp_path):
    path = _png(tmp_path / "h.png", _halves())
    nchw, _ = load_image(path, ImagePreprocessing().resolved(NCHW))
    assert nchw[0, 3, 0] == 200 and nchw[0, 3, 7] == 0 and nchw[2, 3, 7] == 100  # red left, blue right
    nhwc, _ = load_image(path, ImagePreprocessing().resolved(NHWC))
    assert nhwc.shape == (8, 8, 3) and np.array_equal(nhwc, np.moveaxis(nchw, 0, -1))
    bgr, _ = load_image(path, ImagePreprocessing(channels="BGR").resolved(NHWC))
    assert bgr[3, 0, 2] == 200 and bgr[3, 7, 0] == 100 and np.array_equal(bgr, nhwc[..., ::-1])
    grey, display = load_image(path, ImagePreprocessing().resolved(GREY))
    # Pillow's ITU-R 601-2 luma, L = R*299/1000 + G*587/1000 + B*114/1000, rounded
    assert grey.shape == (8, 8) and grey[0, 0] == round(200 * 0.299) and grey[0, 7] == round(100 * 0.114)
    assert display.shape == (8, 8)


def test_resize_and_centre_crop_match_pillow_and_torchvision_rule(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = _png(tmp_path / "r.png", pixels)
    values, display = load_image(path, ImagePreprocessing(resize=10, layout="NHWC").resolved(NHWC))
    # torchvision Resize(10): shorter side 10, longer int(10 * 30 / 20) = 15; CenterCrop(8): offsets round((15-8)/2)
    # = round(3.5) = 4 and round((10-8)/2) = 1
    oracle = np.asarray(Image.open(path).convert("RGB").resize((15, 10), Image.Resampling.BILINEAR))[1:9, 4:12]
    assert np.array_equal(values, oracle.astype(np.float32))
    assert np.array_equal(display, np.moveaxis(oracle, -1, 0))
    straight, _ = load_image(path, ImagePreprocessing().resolved(NHWC))
    oracle = np.asarray(Image.open(path).convert("RGB").resize((8, 8), Image.Resampling.BILINEAR))
    assert np.array_equal(straight, oracle.astype(np.float32))


def test_jpeg_at_pixel_magnitudes(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "p.jpg"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, quality=90)
    values, _ = load_image(path, ImagePreprocessing().resolved(NCHW))
    decoded = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert np.array_equal(values, np.moveaxis(decoded, -1, 0)) and values.max() > 100


def test_defaults_from_the_model_and_refusals():
    assert ImagePreprocessing().resolved(NHWC).layout == "NHWC"
    assert ImagePreprocessing().resolved(NCHW).to_dict() == {
        "size": [8, 8], "resize": None, "layout": "NCHW", "channels": "RGB", "scale": 1.0, "mean": None, "std": None,
        "dtype": "float32", "resample": "bilinear"}
    dynamic = TensorSpec("image", ("batch", 3, "h", "w"), np.dtype("float32"))
    assert ImagePreprocessing().resolved(dynamic).size == (None, None)  # a free size: the image's own (hunt 37)
    with pytest.raises(InputError, match="--image-size"):
        ImagePreprocessing(resize=4).resolved(dynamic)  # a crop needs its size
    assert ImagePreprocessing(size=(5, 6)).resolved(dynamic).size == (5, 6)
    with pytest.raises(InputError, match="differs from the 8x8"):
        ImagePreprocessing(size=(5, 6)).resolved(NCHW)
    with pytest.raises(InputError, match="gives 1 channel"):
        ImagePreprocessing(channels="L").resolved(NCHW)
    # a layout that misplaces the channels is blamed, not --channels the user never gave (sweep 35)
    with pytest.raises(InputError, match="--layout NHWC reads the channels of input 'image' on axis 3, which is 8 long.*its "
                                         "layout is NCHW: leave --layout out"):
        ImagePreprocessing(layout="NHWC").resolved(NCHW)
    with pytest.raises(InputError, match="one per channel"):
        ImagePreprocessing(mean=(0.1, 0.2)).resolved(NCHW)
    with pytest.raises(InputError, match="--std"):
        image_preprocessing(std=(0.0,))
    with pytest.raises(InputError, match="smaller than the crop"):
        ImagePreprocessing(resize=4).resolved(NCHW)
    with pytest.raises(InputError, match="--layout"):
        ImagePreprocessing().resolved(TensorSpec("x", ("batch", 5, 8, 8), np.dtype("float32")))


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_image_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        _png(tmp_path / "good.png", np.zeros((64, 64, 3)) + 7)
        content = (tmp_path / "good.png").read_bytes()[:60]
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"cannot read image .*bad\.png.*PNG or JPEG"):
        load_image(path, ImagePreprocessing().resolved(NCHW))


def test_preprocessing_file(tmp_path):
    good = tmp_path / "prep.json"
    good.write_text(json.dumps({"size": 8, "scale": 0.5, "mean": [1, 2, 3], "layout": "NCHW"}))
    prep = image_preprocessing(str(good), std=(2.0,))
    assert prep == ImagePreprocessing(size=(8, 8), scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0,), layout="NCHW")
    assert image_preprocessing(str(good), scale=0.25).scale == 0.25  # the command line wins
    for text, message in (("[1, 2]", "holds a list"), ('{"sise": 8}', "unknown key"), ("{", "not JSON"),
                          ('{"mean": "0.5"}', "not a list of numbers"), ('{"layout": "CHW"}', "--layout")):
        good.write_text(text)
        with pytest.raises(InputError, match=message):
            image_preprocessing(str(good))
    good.write_bytes(b"{" + b" " * (70 * 1024) + b"}")
    with pytest.raises(InputError, match="more than the"):
        image_preprocessing(str(good))


# -- tables -------------------------------------------------------------------------------------------------------

TABLE = TensorSpec("features", ("batch", 3), np.dtype("float32"))


def test_csv_and_parquet_rows_with_column_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(2)
    values = rng.normal(0, 300, (5, 3))
    with open(tmp_path / "t.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["age", "income", "debt"])
        writer.writerows(values.tolist())
    rows = read_input_file(tmp_path / "t.csv", [TABLE], InputOptions())
    assert np.array_equal(rows.arrays["features"], values.astype(np.float32))
    assert rows.feature_names == {"features": ["age", "income", "debt"]}
    pq.write_table(pa.table({"debt": values[:, 2], "age": values[:, 0], "note": ["x"] * 5}), tmp_path / "t.parquet")
    rows = read_input_file(tmp_path / "t.parquet", [TABLE], InputOptions(columns=("age", "debt", "age")))
    assert np.array_equal(rows.arrays["features"], values[:, [0, 2, 0]].astype(np.float32))
    with pytest.raises(InputError, match="not numeric"):
        read_input_file(tmp_path / "t.parquet", [TABLE], InputOptions())
    (tmp_path / "bad.csv").write_text("age,income,debt\n1,2,3\n4,oops,6\n")
    with pytest.raises(InputError, match=r"row 1: row does not parse"):
        read_input_file(tmp_path / "bad.csv", [TABLE], InputOptions())


def test_hostile_and_large_tables_are_bounded(tmp_path, monkeypatch):
    """A CSV field over the csv module's 128 KiB limit was an internal error (exit 3); a CSV or text
    file is read whole, so one over `MAX_TEXT_TABLE_BYTES` is refused by size, naming Parquet."""
    from onnx_attr.app import readers

    (tmp_path / "wide.csv").write_text("age,income,debt\n1,2," + "3" * 200_000 + "\n")
    with pytest.raises(InputError, match="does not parse as CSV"):
        read_input_file(tmp_path / "wide.csv", [TABLE], InputOptions())
    (tmp_path / "fine.csv").write_text("age,income,debt\n1,2,3\n")
    monkeypatch.setattr(readers, "MAX_TEXT_TABLE_BYTES", 10)
    with pytest.raises(InputError, match="more than the 0 MiB .* csv file; split it, or save the rows as Parquet"):
        read_input_file(tmp_path / "fine.csv", [TABLE], InputOptions())


def test_a_parquet_shard_reads_only_its_row_groups(tmp_path, monkeypatch):
    """A dataset job's shard of a Parquet table reads the row groups holding its rows and the
    columns the inputs take, not the whole file (a table larger than memory runs shard by shard).
    Oracle: the rows by hand."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from onnx_attr.app.readers import RowReader, describe_sources

    values = np.arange(20 * 3, dtype=np.float64).reshape(20, 3) * 7.5
    pq.write_table(pa.table({"age": values[:, 0], "income": values[:, 1], "debt": values[:, 2],
                             "notes": ["x" * 100] * 20}), tmp_path / "t.parquet", row_group_size=4)
    source = describe_sources([tmp_path / "t.parquet"], [TABLE], InputOptions(columns=("age", "income", "debt")))[0]
    assert source.rows == 20
    read = []
    plain = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, groups, columns=None, **kw: read.append((list(groups), columns)) or
                        plain(self, groups, columns=columns, **kw))
    reader = RowReader([TABLE], InputOptions(columns=("age", "income", "debt")))
    rows = reader.read(source, 6, 13)
    assert np.array_equal(rows.arrays["features"], values[6:13].astype(np.float32))
    assert read == [([1, 2, 3], ["age", "income", "debt"])]
    assert reader.read(source, 20, 20).arrays["features"].shape == (0, 3)


def test_several_inputs_by_name_or_order(tmp_path):
    specs = [TensorSpec("a", ("batch", 1), np.dtype("float32")), TensorSpec("b", ("batch", 1), np.dtype("float32"))]
    (tmp_path / "named.csv").write_text("b,a\n1,2\n3,4\n")
    rows = read_input_file(tmp_path / "named.csv", specs, InputOptions())
    assert rows.arrays["a"].ravel().tolist() == [2, 4] and rows.arrays["b"].ravel().tolist() == [1, 3]
    (tmp_path / "order.csv").write_text("x,y\n1,2\n3,4\n")
    rows = read_input_file(tmp_path / "order.csv", specs, InputOptions())
    assert rows.arrays["a"].ravel().tolist() == [1, 3] and rows.arrays["b"].ravel().tolist() == [2, 4]


# -- the CLI end to end on image files ----------------------------------------------------------------------------

class _SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    path.write_bytes(to_onnx(_SmallCNN(), torch.zeros(1, 3, 8, 8), input_names=("image",)))
    return path


def _images(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    folder.mkdir()
    out = {}
    for name in ("a.png", "b.png"):
        pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        _png(folder / name, pixels)
        out[name] = pixels
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return out


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


IMAGE_OPTIONS = ["--resize", "8", "--scale", "1/255", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def test_attribute_image_folder_end_to_end(tmp_path, cnn_path, capsys):
    images = _images(tmp_path / "pictures")
    out = tmp_path / "out"
    code = main(["attribute", str(cnn_path), "-i", str(tmp_path / "pictures"), "-o", str(out), "-q", *IMAGE_OPTIONS])
    assert code == 4  # the folder ran; one input failed
    index = json.loads((out / "index.json").read_text())
    assert index["failed"] == ["broken.png"] and "cannot read image" in index["results"]["broken.png"]["error"]
    for name, pixels in images.items():
        # the oracle: Pillow's resize (shorter side 8: 8 x int(8*16/12)=10), crop offset round(1.0)=1, then numpy
        resized = np.asarray(Image.fromarray(pixels).resize((10, 8), Image.Resampling.BILINEAR))[:, 1:9]
        x = ((resized / 255.0 - np.array(MEAN)) / np.array(STD)).astype(np.float32)
        x = np.moveaxis(x, -1, 0)[None]
        folder = out / index["results"][name]["folder"]
        report = json.loads((folder / "report.json").read_text())
        attributions = np.load(folder / "attributions.npz")["image"]
        logits, zero = _ort(cnn_path, x), _ort(cnn_path, np.zeros_like(x))
        target = int(report["target"][0])
        assert target == int(logits.argmax())
        assert np.isclose(attributions.sum(dtype=np.float64), logits[0, target] - zero[0, target], rtol=1e-4, atol=1e-5)
        assert report["manifest"]["options"]["preprocessing"]["image"]["resize"] == 8
        assert any(f.startswith("heatmap_image_0") for f in report["files"])
    # a resume with other preprocessing is refused, naming it
    capsys.readouterr()
    code = main(["attribute", str(cnn_path), "-i", str(tmp_path / "pictures"), "-o", str(out), "-q", "--resume",
                 *IMAGE_OPTIONS[:-1], "0.25,0.25,0.25"])
    assert code == 2 and "preprocessing.image.std" in capsys.readouterr().err


def test_picture_shows_the_image_as_given(tmp_path, cnn_path):
    """The input panel of the heatmap is the resized image before normalisation: with pixels at
    0 and 200 only, normalisation would move them, while the picture keeps 0 and 200 as the ends."""
    from onnx_attr.app.readers import picture_arrays

    _png(tmp_path / "h.png", _halves())
    options = InputOptions(image=image_preprocessing(scale=1 / 255, mean=MEAN, std=STD))
    rows = read_input_file(tmp_path / "h.png", load(cnn_path).inputs, options)
    attributions, shown = picture_arrays(rows, {"image": np.ones((1, 3, 8, 8))}, rows.arrays)
    assert shown["image"].max() == 200 and shown["image"].min() == 0
    assert rows.arrays["image"].min() < -1  # the model got the normalised values
    nhwc = read_input_file(tmp_path / "h.png", [NHWC], InputOptions())
    map_ = np.arange(8 * 8 * 3, dtype=np.float32).reshape(1, 8, 8, 3)
    turned, shown = picture_arrays(nhwc, {"image": map_}, nhwc.arrays)
    assert turned["image"].shape == (1, 3, 8, 8) and turned["image"][0, 2, 1, 5] == map_[0, 1, 5, 2]
    assert shown["image"].shape == (1, 3, 8, 8)  # pictures take channels first


# -- the dataset job on an image folder ---------------------------------------------------------------------------

def test_dataset_image_folder(tmp_path, cnn_path):
    from onnx_attr.app.dataset_job import attribute_dataset, attribution_array, read_results

    images = _images(tmp_path / "pictures")
    (tmp_path / "pictures" / "README.txt").write_text("notes beside the data, not examples (no --tokenizer)\n")
    sub = tmp_path / "pictures" / "cats"
    sub.mkdir()
    _png(sub / "c.png", np.full((8, 8, 3), 255, np.uint8))
    options = InputOptions(image=image_preprocessing(resize=8, scale=1 / 255))
    summary = attribute_dataset(str(cnn_path), str(tmp_path / "pictures"), str(tmp_path / "out"), inputs=options,
                                shard_rows=2, quiet=True)
    assert summary["rows"] == 4 and summary["error_rows_computed"] == 1 and summary["shards"] == 2
    table = read_results(tmp_path / "out")
    assert table.column("source").to_pylist() == ["a.png", "b.png", "broken.png", "cats/c.png"]
    assert table.column("status").to_pylist() == ["ok", "ok", "error", "ok"]
    assert "cannot read image" in table.column("error").to_pylist()[2]
    attributions = attribution_array(table)
    resized = np.asarray(Image.fromarray(images["a.png"]).resize((10, 8), Image.Resampling.BILINEAR))[:, 1:9]
    x = np.moveaxis(resized / 255.0, -1, 0)[None].astype(np.float32)
    logits, zero = _ort(cnn_path, x), _ort(cnn_path, np.zeros_like(x))
    target = table.column("target").to_pylist()[0]
    assert np.isclose(attributions[0].sum(dtype=np.float64), logits[0, target] - zero[0, target], rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="preprocessing.image.scale"):
        attribute_dataset(str(cnn_path), str(tmp_path / "pictures"), str(tmp_path / "out"), shard_rows=2, quiet=True,
                          resume=True, inputs=InputOptions(image=image_preprocessing(resize=8, scale=1 / 256)))


# -- text through a tokenizer -------------------------------------------------------------------------------------

SENTENCES = ["the film was good", "the film was bad", "a good good plot", "bad acting and a bad plot",
             "the plot was fine"]
LENGTH = 6


def _tokenizer(path: Path) -> Path:
    """A word-level tokenizer trained here, in memory, from a few sentences."""
    tokenizers = pytest.importorskip("tokenizers")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, tokenizers.trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer.save(str(path))
    return path


class _MaskedBag(torch.nn.Module):
    """ids -> embedding -> tanh -> mean over the tokens the mask keeps -> linear."""

    def __init__(self, vocabulary: int = 32):
        super().__init__()
        torch.manual_seed(1)
        self.embed, self.head = torch.nn.Embedding(vocabulary, 5), torch.nn.Linear(5, 3)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return self.head(40.0 * (torch.tanh(self.embed(input_ids)) * mask).sum(1) / mask.sum(1).clamp(min=1.0))


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    module = _MaskedBag().eval()
    example = (torch.zeros(1, LENGTH, dtype=torch.int64), torch.ones(1, LENGTH, dtype=torch.int64))
    path = folder / "bag.onnx"
    path.write_bytes(to_onnx(module, example, input_names=("input_ids", "attention_mask")))
    return module, path, _tokenizer(folder / "tokenizer.json")


def _encoded(tokenizer_path: Path, lines: list[str]):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_padding(length=LENGTH, pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=LENGTH)
    return tokenizer.encode_batch(lines)


def test_attribute_text_through_a_tokenizer(tmp_path, text_model, capsys):
    module, model_path, tokenizer_path = text_model
    lines = ["the film was good", "a bad bad plot and bad acting here"]  # the second one is truncated
    (tmp_path / "reviews.txt").write_text("\n".join(lines) + "\n\n")
    out = tmp_path / "out"
    code = main(["attribute", str(model_path), "-i", str(tmp_path / "reviews.txt"), "-o", str(out), "-q", "--plot",
                 "--tokenizer", str(tokenizer_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    encodings = _encoded(tokenizer_path, lines)
    assert report["tokens"] == [e.tokens for e in encodings] and report["tokens"][0][-1] == "[PAD]"
    assert report["manifest"]["options"]["preprocessing"]["text"]["length"] == LENGTH
    assert "keeps the input's ids" in report["ids_note"]  # what the baseline moves is said (hunt 26, CLIP)
    scores = np.load(out / "attributions.npz")["input_ids"]
    assert scores.shape == (2, LENGTH)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.no_grad():  # the oracle: the module itself, at the baseline of token id 0 ([PAD]) everywhere
        logits = module(ids, mask).double()
        reference = module(torch.zeros_like(ids), mask).double()
    for i, target in enumerate(report["target"]):
        change = float(logits[i, target] - reference[i, target])
        assert abs(change) > 1.0
        assert np.isclose(scores[i].sum(dtype=np.float64), change, rtol=1e-4, atol=1e-5)
    assert scores[0, 4:].tolist() == [0.0, 0.0]  # padding, masked out, gets nothing
    page = (out / "tokens_input_ids_0.html").read_text()
    assert "film" in page  # the token page reads the tokenizer's vocabulary


def test_text_refusals(tmp_path, text_model):
    _, model_path, tokenizer_path = text_model
    (tmp_path / "t.txt").write_text("the film\n")
    args = ["attribute", str(model_path), "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "o"), "-q"]
    assert main(args) == 2
    assert main([*args, "--tokenizer", str(tokenizer_path), "--max-length", "9"]) == 2
    (tmp_path / "bad.json").write_text('{"model": 3}')
    assert main([*args, "--tokenizer", str(tmp_path / "bad.json")]) == 2


def test_dataset_text_rows(tmp_path, text_model):
    from onnx_attr.app.dataset_job import attribute_dataset, attribution_array, read_results
    from onnx_attr.app.text_inputs import text_preprocessing

    module, model_path, tokenizer_path = text_model
    (tmp_path / "reviews.txt").write_text("\n".join(SENTENCES) + "\n")
    options = InputOptions(text=text_preprocessing(str(tokenizer_path)))
    summary = attribute_dataset(str(model_path), str(tmp_path / "reviews.txt"), str(tmp_path / "out"),
                                inputs=options, shard_rows=2, batch_size=2, quiet=True)
    assert summary["rows"] == 5 and summary["error_rows_computed"] == 0
    table = read_results(tmp_path / "out")
    scores = attribution_array(table)
    encodings = _encoded(tokenizer_path, SENTENCES)
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    with torch.no_grad():
        change = (module(ids, mask) - module(torch.zeros_like(ids), mask)).double().numpy()
    targets = table.column("target").to_pylist()
    assert scores.shape == (5, LENGTH)
    assert np.allclose(scores.sum(1, dtype=np.float64), change[np.arange(5), targets], rtol=1e-4, atol=1e-5)


# -- the dataset job's --baseline mean ----------------------------------------------------------------------------

def test_dataset_mean_baseline_is_independent_of_batching(tmp_path):
    """The mean row is computed in a first pass (oracle: numpy's float64 mean of the readable rows);
    attributions add up to f(x) - f(mean) by onnxruntime, and are the same for any batch size."""
    import onnxruntime as ort

    from onnx_attr.app.dataset_job import attribute_dataset, attribution_array, read_results

    from conftest import SAMPLES as samples
    model = samples / "breast_cancer_mlp.onnx"
    features = np.load(samples / "breast_cancer_mlp_inputs.npz")["features"]  # 8 rows, values up to ~2,500
    table = np.concatenate([features, features * 1.5]).astype(np.float64)
    n = len(table)
    names = [f"f{i}" for i in range(features.shape[1])]
    with open(tmp_path / "rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(table.tolist())
        writer.writerow(["oops"] * len(names))  # an error row: left out of the mean
    results = {}
    for batch in (3, 64):
        out = tmp_path / f"out{batch}"
        summary = attribute_dataset(str(model), str(tmp_path / "rows.csv"), str(out), baseline="mean",
                                    batch_size=batch, shard_rows=5, quiet=True)
        assert summary["error_rows_computed"] == 1
        results[batch] = read_results(out)
    mean = np.load(tmp_path / "out3" / "baseline-mean.npz")["features"]
    assert np.array_equal(mean, table.astype(np.float32).astype(np.float64).mean(0)[None].astype(np.float32))
    manifest = json.loads((tmp_path / "out3" / "manifest.json").read_text())
    assert manifest["baseline"]["spec"] == "mean" and manifest["baseline"]["rows_averaged"] == n
    first, second = (attribution_array(results[b]) for b in (3, 64))
    # the same mean row whatever the batch size (the attributions then differ only by float32 matmul order)
    assert (tmp_path / "out3" / "baseline-mean.npz").read_bytes() == (tmp_path / "out64" / "baseline-mean.npz").read_bytes()
    assert np.allclose(first[:n], second[:n], rtol=1e-5, atol=1e-5) and np.isnan(first[n]).all()
    import onnx

    proto = onnx.load(str(model))  # the logits: the final Sigmoid cut off, as the job strips it
    last = proto.graph.node[-1]
    proto.graph.output[0].name = last.input[0]
    proto.graph.node.remove(last)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"features": table.astype(np.float32)})[0][:, 0]
    reference = session.run(None, {"features": mean})[0][0, 0]
    assert np.allclose(first[:n].sum(1, dtype=np.float64), logits - reference, rtol=1e-4, atol=1e-4)


def test_python_api_reads_an_image_file(tmp_path, cnn_path):
    import onnx_attr

    _png(tmp_path / "h.png", _halves())
    model = onnx_attr.load(cnn_path)
    options = onnx_attr.InputOptions(image=onnx_attr.image_preprocessing(scale=1 / 255, mean=MEAN, std=STD))
    inputs = onnx_attr.read_inputs(tmp_path / "h.png", model, options)
    expected = (np.moveaxis(_halves(), -1, 0)[None] / 255.0 - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    assert inputs["image"].shape == (1, 3, 8, 8) and np.allclose(inputs["image"], expected, rtol=1e-6)
    attributions, delta = onnx_attr.DeepLift(model).attribute(inputs, target=0, return_convergence_delta=True)
    logits = _ort(cnn_path, inputs["image"])[0, 0] - _ort(cnn_path, np.zeros((1, 3, 8, 8), np.float32))[0, 0]
    assert np.isclose(np.asarray(attributions["image"]).sum(dtype=np.float64), logits, rtol=1e-4, atol=1e-5)


def test_attribute_table_records_its_columns(tmp_path, capsys):
    from conftest import SAMPLES

    features = np.load(SAMPLES / "breast_cancer_mlp_inputs.npz")["features"][:3]
    names = [f"feat_{i}" for i in range(features.shape[1])]
    with open(tmp_path / "rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(features.tolist())
    args = ["attribute", str(SAMPLES / "breast_cancer_mlp.onnx"), "-i", str(tmp_path / "rows.csv"), "-o",
            str(tmp_path / "out"), "-q", "--plot"]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["feature_names"] == {"features": names} and "bars_features_0.png" in report["files"]
    assert np.array_equal(np.load(tmp_path / "out" / "attributions.npz")["features"].shape, features.shape)
    capsys.readouterr()
    assert main([*args, "--resume", "--columns", ",".join(reversed(names))]) == 2
    assert "preprocessing.columns" in capsys.readouterr().err


def test_raw_pixels_are_reported(tmp_path, cnn_path, capsys):
    from onnx_attr.app.preprocess import PixelRangeWarning

    """A PNG fed to a floating input with no scale, mean or std reaches the model as 0..255: right
    only where the graph normalises itself, so the report and the console say so (pymupdf's [0, 1]
    models got 0..255 in silence). Given a scale, nothing is said."""
    _png(tmp_path / "h.png", _halves())
    code = main(["attribute", str(cnn_path), "-i", str(tmp_path / "h.png"), "-o", str(tmp_path / "raw"), "-q",
                 "--no-pictures"])
    assert code == 0
    report = json.loads((tmp_path / "raw" / "report.json").read_text())
    assert any("raw pixel values 0..255" in w and "--scale 1/255" in w for w in report["input_warnings"])
    shown = capsys.readouterr()
    assert "raw pixel values" in shown.out + shown.err
    code = main(["attribute", str(cnn_path), "-i", str(tmp_path / "h.png"), "-o", str(tmp_path / "scaled"), "-q",
                 "--no-pictures", "--scale", "1/255"])
    assert code == 0
    assert "input_warnings" not in json.loads((tmp_path / "scaled" / "report.json").read_text())
    shown = capsys.readouterr()
    assert "raw pixel values" not in shown.out + shown.err
    folder = tmp_path / "pictures"
    folder.mkdir()
    for k in range(3):
        _png(folder / f"{k}.png", _halves())
    with pytest.warns(PixelRangeWarning) as said:
        assert main(["dataset", str(cnn_path), "-i", str(folder), "-o", str(tmp_path / "ds"), "-q"]) == 0
    assert len([w for w in said if issubclass(w.category, PixelRangeWarning)]) == 1  # once a job, not once a reader


# -- a model that fixes one side of its picture (a text-line recogniser's height) ---------------------------------

LINE = TensorSpec("line", ("batch", 1, 16, "width"), np.dtype("float32"))


class _LineReader(torch.nn.Module):
    """A CRNN-shaped toy: grey [N, 1, 16, W] -> per-column scores [N, W / 2, 5]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 5)

    def forward(self, x):
        features = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).mean(2)  # [N, 6, W / 2]
        return self.head(features.transpose(1, 2))


@pytest.fixture(scope="module")
def line_path(tmp_path_factory) -> Path:
    import io
    import warnings

    path = tmp_path_factory.mktemp("line") / "line.onnx"
    buffer = io.BytesIO()
    shapes = ({0: torch.export.Dim("batch"), 3: 2 * torch.export.Dim("half", min=2, max=2048)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LineReader().eval(), (torch.zeros(1, 1, 16, 32),), input_names=["line"],
                          dynamic_shapes=shapes, dynamo=True, verbose=False).save(buffer)
    path.write_bytes(buffer.getvalue())
    assert load(str(path)).inputs[0].shape[2] == 16 and not isinstance(load(str(path)).inputs[0].shape[3], int)
    return path


def test_one_fixed_side_keeps_the_aspect_ratio(tmp_path):
    """hunt 36: a handwriting recogniser [1, 1, 48, W] refused a PNG ("no fixed height and width") though its
    height is fixed; an OCR pipeline resizes a line to that height with the aspect kept. Oracle: Pillow's
    resize to 16 x round(50 * 16 / 20) = 40."""
    prep = ImagePreprocessing(scale=1 / 255).resolved(LINE)
    assert prep.size == (16, None) and prep.to_dict()["size"] == [16, None] and prep.channels == "L"
    pixels = np.random.default_rng(4).integers(0, 256, (20, 50), dtype=np.uint8)
    path = _png(tmp_path / "line.png", pixels)
    values, display = load_image(path, prep)
    oracle = np.asarray(Image.fromarray(pixels).resize((40, 16), Image.Resampling.BILINEAR))
    assert values.shape == (1, 16, 40) and np.allclose(values[0], oracle / 255, rtol=0, atol=1e-7)
    assert np.array_equal(display, oracle)
    wide = TensorSpec("strip", ("batch", 3, "height", 24), np.dtype("float32"))  # the width fixed instead
    assert ImagePreprocessing().resolved(wide).size == (None, 24)
    assert load_image(path, ImagePreprocessing().resolved(wide))[0].shape == (3, 10, 24)  # 20 * 24 / 50 = 9.6
    with pytest.raises(InputError, match="no fixed height and width"):  # a resize has no crop size to reach here
        ImagePreprocessing(resize=20).resolved(LINE)
    # the manifest's record, given back as a preprocessing file, makes the same values
    recorded = tmp_path / "prep.json"
    recorded.write_text(json.dumps(prep.to_dict()))
    again = image_preprocessing(str(recorded)).resolved(LINE)
    assert again == prep and np.array_equal(load_image(path, again)[0], values)
    with pytest.raises(InputError, match="give both its sides"):
        image_preprocessing(str(recorded), resize=20).resolved(LINE)


def test_one_fixed_side_end_to_end(tmp_path, line_path, capsys):
    """The CLI on a PNG line: the attributions add up to onnxruntime's change of the picked (step, class)."""
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (24, 60), dtype=np.uint8)  # 16 x 40 once resized
    path = _png(tmp_path / "line.png", pixels)
    out = tmp_path / "out"
    assert main(["attribute", str(line_path), "-i", str(path), "-o", str(out), "-q", "--scale", "1/255",
                 "--target", "7,3", "--baseline", "zeros"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["manifest"]["options"]["preprocessing"]["image"]["size"] == [16, None]
    attributions = np.load(out / "attributions.npz")["line"]
    x = (np.asarray(Image.fromarray(pixels).resize((40, 16), Image.Resampling.BILINEAR)) / 255).astype(np.float32)
    x = x[None, None]
    session = ort.InferenceSession(str(line_path), providers=["CPUExecutionProvider"])
    change = session.run(None, {"line": x})[0][0, 7, 3] - session.run(None, {"line": np.zeros_like(x)})[0][0, 7, 3]
    assert attributions.shape == (1, 1, 16, 40)
    assert np.isclose(attributions.sum(dtype=np.float64), change, rtol=1e-4, atol=1e-6)


def test_one_fixed_side_rows_share_the_first_size(tmp_path, line_path):
    """Rows of one run (a dataset job's) share one size: an image of another aspect is an error row that
    names the --image-size that would resize every image to the first one's."""
    from onnx_attr.app.readers import RowReader, describe_sources

    folder = tmp_path / "lines"
    folder.mkdir()
    _png(folder / "a.png", np.full((20, 50), 90, np.uint8))  # 16 x 40
    _png(folder / "b.png", np.full((40, 100), 90, np.uint8))  # 16 x 40 too
    _png(folder / "c.png", np.full((20, 30), 90, np.uint8))  # 16 x 24
    specs = load(str(line_path)).inputs
    options = InputOptions(image=ImagePreprocessing(scale=1 / 255))
    reader = RowReader(specs, options)
    (source,) = describe_sources(sorted(folder.iterdir()), specs, options)
    rows = reader.read(source, 0, source.rows)
    assert rows.errors[:2] == [None, None] and "give --image-size 16x40" in rows.errors[2]
    assert rows.arrays["line"].shape == (3, 1, 16, 40) and not rows.arrays["line"][2].any()  # zeros in its place
    later = reader.read(source, 2, 3)  # a later batch of the same run keeps the first size
    assert "give --image-size 16x40" in later.errors[0] and later.arrays["line"].shape == (1, 1, 16, 40)


def test_an_audio_file_is_refused_with_how_to_feed_it(tmp_path, cnn_path, capsys):
    """hunt 36: a .wav given to `-i` said only "neither an .npz nor an .npy file"."""
    import wave

    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes(np.zeros(1600, np.int16).tobytes())
    assert main(["attribute", str(cnn_path), "-i", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err  # `attribute` reads audio (test_audio_inputs.py), but an image model takes none
    assert "audio files feed one waveform input" in err and "image: float32 [batch, 3, 8, 8]" in err
    assert main(["verify", str(cnn_path), "--input", str(path)]) == 2  # verify reads files as attribute does
    assert "audio files feed one waveform input" in capsys.readouterr().err
    from onnx_attr.importing.inputs import read_npz  # the API's array reader says where audio is read

    with pytest.raises(InputError, match="audio files are read by `attribute` and `dataset`.*numpy.savez"):
        read_npz(path, load(str(cnn_path)).inputs)


def test_no_fixed_side_feeds_the_image_at_its_own_size(tmp_path):
    """hunt 37: a fully convolutional segmenter [N, 3, H, W] with both sides free refused a PNG ("give
    --image-size"); the image's own size is what it takes. Oracle: the pixels Pillow reads, and
    onnxruntime's change for completeness."""
    import onnxruntime as ort

    k = (np.random.default_rng(9).standard_normal((1, 3, 3, 3)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "k"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "fcn", [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT,
                                                                           ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [onnx.numpy_helper.from_array(k, "k")])
    model_path = tmp_path / "fcn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model_path)
    pixels = np.random.default_rng(10).integers(0, 256, (7, 10, 3), dtype=np.uint8)
    path = _png(tmp_path / "p.png", pixels)
    spec = TensorSpec("image", ("N", 3, "H", "W"), np.dtype("float32"))
    values, _ = load_image(path, ImagePreprocessing(scale=1 / 255).resolved(spec))
    assert np.allclose(values, np.moveaxis(pixels, -1, 0) / 255, rtol=0, atol=1e-7)
    out = tmp_path / "out"
    assert main(["attribute", str(model_path), "-i", str(path), "-o", str(out), "-q", "--scale", "1/255",
                 "--target", "0,3,4"]) == 0
    attributions = np.load(out / "attributions.npz")["image"]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = values[None].astype(np.float32)
    change = session.run(None, {"image": x})[0][0, 0, 3, 4] - session.run(None, {"image": 0 * x})[0][0, 0, 3, 4]
    assert attributions.shape == (1, 3, 7, 10) and abs(float(change)) > 1e-3
    assert float(attributions.astype(np.float64).sum()) == pytest.approx(float(change), rel=1e-5, abs=1e-6)


def test_an_image_fed_at_its_own_size_has_a_budget(tmp_path, monkeypatch):
    """Review of session 49: at its own size, a huge image would go through a method at full resolution;
    past the budget the error asks for --image-size."""
    import onnx_attr.app.preprocess as preprocess

    monkeypatch.setattr(preprocess, "MAX_NATIVE_PIXELS", 50)
    path = _png(tmp_path / "p.png", np.zeros((8, 8, 3), np.uint8))
    spec = TensorSpec("image", ("N", 3, "H", "W"), np.dtype("float32"))
    with pytest.raises(InputError, match=r"8x8, more than the 50 pixels.*--image-size"):
        load_image(path, ImagePreprocessing().resolved(spec))
