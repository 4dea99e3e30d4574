"""The dataset run report: its figures against numpy over the whole result table, and the page in
a real headless Chromium (Debian's `chromium`; skipped without it): loads with no console error,
a click on a sort shows the gallery in the order the Parquet rows give, a filter shows one class.

Oracles: `read_results` (every row, in memory) with numpy written here independently of the
streaming aggregates (border rings by index arithmetic, not by slicing), the CSV header, and the
browser's own rendering of the page.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLES

pytest.importorskip("pyarrow")

from onnx_attr import InputError  # noqa: E402
from onnx_attr.app.dataset_job import attribute_dataset, attribution_array, read_results  # noqa: E402
from onnx_attr.app.report_html import (Collector, ReportOptions, border_profile, load_run,  # noqa: E402
                                   write_report)

ROOT = Path(__file__).resolve().parent.parent
CNN = SAMPLES / "digits_cnn.onnx"
MLP = SAMPLES / "breast_cancer_mlp.onnx"
ROWS = 150
BAD_ROW = 7


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """150 digits (pixels 0-255 as the raw images scaled by 16, so logits are large), one NaN row."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    x = (load_digits().images[:ROWS] * 16.0).astype(np.float32)[:, None]
    x[BAD_ROW, 0, 2, 5] = np.nan
    (folder / "data").mkdir()
    np.savez(folder / "data" / "a.npz", image=x[:100])
    np.savez(folder / "data" / "b.npz", image=x[100:])
    attribute_dataset(str(CNN), str(folder / "data"), str(folder / "out"), shard_rows=40, batch_size=32,
                      quiet=True, report=ReportOptions(gallery_rows=40, pictures=3))
    return folder / "out"


def test_image_aggregates_match_numpy_over_every_row(digits_run):
    table = read_results(digits_run)
    values = attribution_array(table)[:, 0].astype(np.float64)  # [rows, 8, 8]: one channel
    ok = np.asarray([s == "ok" for s in table.column("status").to_pylist()])
    assert ok.sum() == ROWS - 1 and not ok[BAD_ROW]
    predicted = np.asarray([p if p is not None else -1 for p in table.column("prediction").to_pylist()])
    collected = Collector(load_run(digits_run), ReportOptions(gallery_rows=40)).collect()
    relative = np.abs(table.column("relative_delta").to_numpy(zero_copy_only=False)[ok])
    maps = collected.images["attributions"].mean_maps()
    np.testing.assert_allclose(maps["all"], np.abs(values[ok]).mean(0), rtol=1e-12)
    for cls in set(predicted[ok].tolist()):
        picked = ok & (predicted == cls)
        np.testing.assert_allclose(maps[cls], np.abs(values[picked]).mean(0), rtol=1e-12)
    # rings by index arithmetic: distance of (i, j) to the nearest edge
    i, j = np.indices((8, 8))
    ring = np.minimum(np.minimum(i, j), np.minimum(7 - i, 7 - j))
    mean_abs = np.abs(values[ok])
    expected = [mean_abs[:, ring == d].mean() for d in range(4)]
    np.testing.assert_allclose(border_profile(maps["all"]), expected, rtol=1e-12)
    assert collected.relative.n == ok.sum() and sum(c for _, c in collected.relative.bins()) == ok.sum()
    bins = dict(collected.relative.bins())
    for d in range(-12, 2):  # "e-7" counts [1e-7, 1e-6)
        assert bins[f"e{d}"] == int(np.sum((relative >= 10.0 ** d) & (relative < 10.0 ** (d + 1)))), d
    assert bins["0"] == int(np.sum(relative == 0))
    assert collected.relative.largest == pytest.approx(float(relative.max()), rel=1e-12)
    assert collected.relative.largest <= 1e-4  # the bar, at 0-255 pixels
    assert collected.error_count == 1 and collected.errors[0].row_id == BAD_ROW
    assert "NaN" in collected.errors[0].error


def test_border_profile_on_a_hand_made_map():
    """A 5x6 map: ring 0 is the 18 edge pixels, ring 1 the 8 around the 2 centre pixels of ring 2."""
    m = np.zeros((5, 6))
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = 3.0
    m[1:4, 1:5] = 1.0
    m[2, 2:4] = 10.0
    assert border_profile(m) == pytest.approx([3.0, 1.0, 10.0])


def test_gallery_is_capped_and_holds_the_worst_rows_and_a_spread(digits_run):
    table = read_results(digits_run)
    collected = Collector(load_run(digits_run), ReportOptions(gallery_rows=40)).collect()
    gallery = collected.gallery()
    assert len(gallery) <= 40
    stride = math.ceil(ROWS / 36)
    spread = {r for r in range(ROWS) if r % stride == 0}
    relative = table.column("relative_delta").to_numpy(zero_copy_only=False)
    others = [(relative[r], r) for r in range(ROWS) if r not in spread and np.isfinite(relative[r])]
    worst = {r for _, r in sorted(others, key=lambda t: (-t[0], t[1]))[:4]}
    assert {r.row_id for r in gallery} == spread | worst
    assert [r.row_id for r in gallery[:4]] == [r for _, r in sorted(others, key=lambda t: (-t[0], t[1]))[:4]]


def test_page_summary_errors_pictures_and_rebuild(digits_run, tmp_path):
    import shutil

    page = (digits_run / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched: self-contained
    summary = json.loads((digits_run / "summary.json").read_text())
    assert summary["verify"]["passed"] and summary["verify"]["rows"] == 16
    assert "deeplift" in page and "PASSED" in page and "digits_cnn.onnx" in page
    assert "holds NaN" in page and page.count('class="card') <= 40
    assert "The delta is exact: Σ attributions = f(x) − f(baseline)" in page  # DeepLift's: what it measures
    pictures = sorted((digits_run / "report_files").glob("row_*.png"))
    assert len(pictures) == 3
    for p in pictures:
        assert f"report_files/{p.name}" in page
    # rebuilt from the shards alone with other sizes: the CLI command
    copy = tmp_path / "copy"
    shutil.copytree(digits_run, copy, ignore=shutil.ignore_patterns("report*"))
    done = subprocess.run([sys.executable, "-m", "onnx_attr.app.cli", "report", str(copy), "--gallery-rows", "10",
                           "--pictures", "0"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rebuilt = (copy / "report.html").read_text()
    assert rebuilt.count('class="card') == 10 and ">full picture</a>" not in rebuilt and "PASSED" in rebuilt


def test_report_refuses_an_unfinished_run(tmp_path, digits_run):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(digits_run, copy)
    next(copy.glob("shard-000001-*.parquet")).unlink()
    with pytest.raises(InputError, match="lacks 1 of 5 shards.*--resume"):
        write_report(copy)
    with pytest.raises(InputError, match="no readable manifest.json"):
        write_report(tmp_path)
    done = subprocess.run([sys.executable, "-m", "onnx_attr.app.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 2 and "manifest.json" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(InputError, match="gallery_rows"):
        ReportOptions(gallery_rows=-1)


def test_tabular_feature_importance_named_after_the_csv_columns(tmp_path):
    import csv

    features = np.load(SAMPLES / "breast_cancer_mlp_inputs.npz")["features"]
    rng = np.random.default_rng(0)
    rows = features[rng.integers(0, len(features), 60)] * rng.uniform(0.8, 1.2, (60, 30))
    names = [f"measure <{i}>" for i in range(30)]  # escaped in the page
    with open(tmp_path / "rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(rows.tolist())
    attribute_dataset(str(MLP), str(tmp_path / "rows.csv"), str(tmp_path / "out"), quiet=True,
                      report=ReportOptions(gallery_rows=20, pictures=1))
    table = read_results(tmp_path / "out")
    values = attribution_array(table).astype(np.float64)
    run = load_run(tmp_path / "out")
    assert run.columns[0].kind == "bars" and run.columns[0].features == names
    aggregate = Collector(run, ReportOptions()).collect().features["attributions"]
    np.testing.assert_allclose(aggregate.magnitude / aggregate.n, np.abs(values).mean(0), rtol=1e-12)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "measure &lt;3&gt;" in page and "measure <3>" not in page
    top = names[int(np.argmax(np.abs(values).mean(0)))]
    section = page[page.index("Global feature importance"):]
    first = re.search(r"<td>(measure &lt;\d+&gt;)</td>", section).group(1)
    assert first == top.replace("<", "&lt;").replace(">", "&gt;")
    assert len(list((tmp_path / "out" / "report_files").glob("row_*.png"))) == 1


# -- in a real browser -----------------------------------------------------------------------------------------

def _chromium():
    from browser import find_chromium

    path = find_chromium()
    if path is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    return path


def _shown(browser) -> list[int]:
    return browser.evaluate("Array.from(document.querySelectorAll('#gallery .card'))"
                            ".filter(c => !c.hidden).map(c => Number(c.dataset.row))")


def test_report_in_headless_chromium(digits_run, tmp_path):
    from browser import Browser

    table = read_results(digits_run)
    delta = dict(zip(table.column("row_id").to_pylist(), table.column("convergence_delta").to_pylist()))
    prediction = dict(zip(table.column("row_id").to_pylist(), table.column("prediction").to_pylist()))
    with Browser(_chromium(), height=1000) as browser:
        browser.open((digits_run / "report.html").as_uri())
        cards = _shown(browser)
        assert cards == sorted(cards) and len(cards) == len(set(cards)) and 0 < len(cards) <= 40
        browser.click("#sort-delta")  # first click: largest delta first, error rows (no delta) last
        ok = [r for r in cards if not math.isnan(delta[r])]
        expected = sorted(ok, key=lambda r: (-delta[r], r)) + sorted(r for r in cards if math.isnan(delta[r]))
        assert _shown(browser) == expected
        assert BAD_ROW not in cards or _shown(browser)[-1] == BAD_ROW
        browser.click("#sort-delta")  # second click: ascending
        assert _shown(browser) == sorted(ok, key=lambda r: (delta[r], r)) + expected[len(ok):]
        classes = sorted({prediction[r] for r in ok})
        browser.evaluate(f"(() => {{ const s = document.getElementById('filter-class'); s.value = '{classes[1]}'; "
                         "s.dispatchEvent(new Event('change')); })()")
        assert _shown(browser) == sorted((r for r in ok if prediction[r] == classes[1]), key=lambda r: (delta[r], r))
        assert browser.evaluate("document.getElementById('shown').textContent").startswith(f"{len(_shown(browser))} of")
        browser.click("#reset")
        assert _shown(browser) == cards
        browser.screenshot(str(tmp_path / "report.png"))
        assert browser.problems == []
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_token_rows_are_shown_as_their_ids_shaded_by_score(tmp_path):
    """A run folder written by hand in the shards' schema (the dataset job does not feed token
    models yet): the gallery shows each row's token ids, read back from the source, in order, the
    largest score in full red and the most negative in full blue."""
    import hashlib

    import pyarrow as pa

    from onnx_attr.app.dataset_job import _tensor_column, commit_shard

    ids = np.array([[5, 17, 99, 3, 42, 7], [8, 8, 1, 2, 0, 11]], dtype=np.int64)
    np.savez(tmp_path / "tokens.npz", ids=ids)
    scores = np.array([[0.1, 2.0, -0.5, 0.0, 0.3, -0.05], [-3.0, 0.2, 0.1, 0.1, 0.0, 1.0]], dtype=np.float32)
    digest = "0123456789abcdef"
    manifest = {"hash": digest, "method": "deeplift", "model_sha256": "0" * 64,
                "preprocessing": {"inputs": [{"name": "ids", "shape": ["N", 6], "dtype": "int64"}]},
                "dataset": {"rows": 2, "shard_rows": 2, "shards": [[0, 0, 2]],
                            "sources": [{"name": "tokens.npz", "kind": "npz", "rows": 2, "sha256": hashlib.sha256(
                                (tmp_path / "tokens.npz").read_bytes()).hexdigest()}]},
                "execution": {"engine": "local", "input_root": str(tmp_path)}}
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(manifest))
    table = pa.table({"row_id": pa.array([0, 1], pa.int64()), "source": ["tokens.npz"] * 2,
                      "source_row": pa.array([0, 1], pa.int64()), "status": ["ok", "ok"],
                      "error": pa.array([None, None], pa.string()), "prediction": pa.array([1, 0], pa.int64()),
                      "output": [4.5, -1.0], "target": pa.array([1, 0], pa.int64()),
                      "convergence_delta": [1e-7, -2e-7], "relative_delta": [1e-8, 3e-8],
                      "attributions": _tensor_column(scores, [False, False])})
    commit_shard(out, 0, digest, table)
    page = write_report(out, ReportOptions(pictures=1)).read_text()
    # by hand: colours saturate at the 98th percentile of |scores| (interpolated), 1.85 for row 0 and
    # 2.8 for row 1; red (214, 39, 40), blue (31, 119, 180), white at 0, linear in between:
    # row 0: 2.0 -> full red; -0.5 -> 255 - 0.5/1.85 * (224, 136, 75) = (194, 218, 235)
    # row 1: 1.0 -> 255 - 1/2.8 * (41, 216, 215) = (240, 178, 178); -3.0 -> full blue
    expected = [("214,39,40", "194,218,235"), ("240,178,178", "31,119,180")]
    for row in range(2):
        card = re.search(rf'data-row="{row}".*?</div>', page, re.S).group(0)
        shown = re.findall(r'<span class="tok" title="([^"]+)" style="background: rgb\(([\d,]+)\)">#(\d+)</span>',
                           card)
        assert [int(t) for _, _, t in shown] == ids[row].tolist()
        assert [float(s) for s, _, _ in shown] == pytest.approx(scores[row].tolist(), rel=1e-3)
        colours = [c for _, c, _ in shown]  # by position (row 1 repeats a token)
        assert (colours[int(np.argmax(scores[row]))], colours[int(np.argmin(scores[row]))]) == expected[row]
    assert (out / "report_files" / "row_0.html").exists()


def test_the_dataset_command_writes_the_report_unless_told_not_to(tmp_path, capsys):
    from onnx_attr.app.cli import main

    np.savez(tmp_path / "rows.npz", features=np.load(SAMPLES / "breast_cancer_mlp_inputs.npz")["features"])
    common = ["-q", "dataset", str(MLP), "-i", str(tmp_path / "rows.npz")]
    assert main([*common, "-o", str(tmp_path / "a"), "--gallery-rows", "3", "--pictures", "1"]) == 0
    assert f"report {tmp_path / 'a' / 'report.html'}" in capsys.readouterr().out
    page = (tmp_path / "a" / "report.html").read_text()
    assert page.count('class="card') == 3 and len(list((tmp_path / "a" / "report_files").iterdir())) == 1
    assert main([*common, "-o", str(tmp_path / "b"), "--no-report"]) == 0
    assert not (tmp_path / "b" / "report.html").exists() and "verify" not in json.loads(
        (tmp_path / "b" / "summary.json").read_text())
    with pytest.raises(SystemExit):
        main([*common, "-o", str(tmp_path / "c"), "--pictures", "-1"])
    assert "--pictures" in capsys.readouterr().err


def test_a_report_that_cannot_be_written_costs_the_page_not_the_results(tmp_path, capsys, monkeypatch):
    """The shards are committed before the report: a failure there is exit 4 with the rebuild command,
    and every row is in the results."""
    import onnx_attr.app.dataset_job as job
    from onnx_attr.app.cli import main

    def unwritable(folder, options):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(job, "write_report", unwritable)
    features = np.load(SAMPLES / "breast_cancer_mlp_inputs.npz")["features"]
    np.savez(tmp_path / "rows.npz", features=features)
    assert main(["-q", "dataset", str(MLP), "-i", str(tmp_path / "rows.npz"), "-o", str(tmp_path / "out")]) == 4
    err = capsys.readouterr().err
    assert "No space left" in err and f"onnx-attr report {tmp_path / 'out'}" in err and "Traceback" not in err
    assert len(read_results(tmp_path / "out")) == len(features)


# -- full pictures over the input, for image and text sources --------------------------------------------------------

def _green_pixels(png: Path) -> int:
    """Pixels of a pure green the signed (red-white-blue) colour maps never draw: the input's."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(np.sum((rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)))


def test_image_pictures_are_drawn_over_the_image(tmp_path):
    """An image folder's full pictures show the image (left half pure green) beside and under the
    heat map, read again with the run's recorded preprocessing; with the folder gone, the page says
    so and the pictures show the attributions alone (no green anywhere)."""
    import torch
    from PIL import Image

    from exporting import to_onnx
    from onnx_attr.app.preprocess import image_preprocessing
    from onnx_attr.app.readers import InputOptions
    from test_input_readers import _SmallCNN

    model = tmp_path / "cnn.onnx"
    model.write_bytes(to_onnx(_SmallCNN(), torch.zeros(1, 3, 8, 8), input_names=("image",)))
    folder = tmp_path / "pictures" / "cats"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = np.zeros((16, 12, 3), np.uint8)
        pixels[:, :6, 1] = 255  # left half pure green; the right half noise without green
        pixels[:, 6:, 0] = rng.integers(0, 256, (16, 6))
        Image.fromarray(pixels).save(folder / f"{i}.png")
    options = InputOptions(image=image_preprocessing(resize=8, scale=1 / 255, mean=(0.5, 0.5, 0.5)))
    out = tmp_path / "out"
    attribute_dataset(str(model), str(tmp_path / "pictures"), str(out), inputs=options, quiet=True,
                      report=ReportOptions(pictures=2))
    page = (out / "report.html").read_text()
    pictures = sorted((out / "report_files").glob("row_*.png"))
    assert len(pictures) == 2 and all(f"href='report_files/{p.name}'" in page for p in pictures)
    assert "without the image" not in page
    with_image = [_green_pixels(p) for p in pictures]
    assert min(with_image) > 500, with_image
    shutil.move(str(tmp_path / "pictures"), str(tmp_path / "moved"))
    page = write_report(out, ReportOptions(pictures=2)).read_text()
    assert "without the image" in page and "cats/0.png" in page
    assert [_green_pixels(p) for p in sorted((out / "report_files").glob("row_*.png"))] == [0, 0]


def test_text_pictures_show_the_tokens_of_the_run_tokenizer(tmp_path):
    """A text file's rows: the token page and the gallery show the tokenizer's own tokens of each
    line, in order, each shaded by its row's score; with the tokenizer changed, positions (said once)."""
    import tokenizers

    from exporting import to_onnx
    from onnx_attr.app.readers import InputOptions
    from onnx_attr.app.text_inputs import text_preprocessing
    from test_input_readers import LENGTH, SENTENCES, _MaskedBag, _tokenizer

    import torch

    example = (torch.zeros(1, LENGTH, dtype=torch.int64), torch.ones(1, LENGTH, dtype=torch.int64))
    model = tmp_path / "bag.onnx"
    model.write_bytes(to_onnx(_MaskedBag().eval(), example, input_names=("input_ids", "attention_mask")))
    tokenizer_path = _tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "reviews.txt").write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "out"
    attribute_dataset(str(model), str(tmp_path / "reviews.txt"), str(out), quiet=True,
                      inputs=InputOptions(text=text_preprocessing(str(tokenizer_path))),
                      report=ReportOptions(pictures=len(SENTENCES)))
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_padding(length=LENGTH, pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=LENGTH)
    scores = attribution_array(read_results(out)).astype(np.float64)
    page = (out / "report.html").read_text()
    for row, encoding in enumerate(tokenizer.encode_batch(SENTENCES)):
        card = re.search(rf'data-row="{row}".*?</div>', page, re.S).group(0)
        shown = re.findall(r'<span class="tok" title="([^"]+)" style="[^"]+">([^<]+)</span>', card)
        assert [t for _, t in shown] == encoding.tokens
        assert [float(v) for v, _ in shown] == pytest.approx(scores[row].tolist(), rel=1e-3, abs=1e-6)
        picture = (out / "report_files" / f"row_{row}.html").read_text()
        assert re.findall(r"white-space: pre\">([^<]+)</span>", picture) == encoding.tokens
    tokenizer_path.write_text(tokenizer_path.read_text().replace("film", "movie"))
    page = write_report(out, ReportOptions(pictures=1)).read_text()
    assert page.count("changed since the run") == 1
    card = re.search(r'data-row="0".*?</div>', page, re.S).group(0)
    assert re.findall(r'<span class="tok"[^>]*>([^<]+)</span>', card) == [f"[{i}]" for i in range(LENGTH)]


def test_a_picture_title_names_a_row_target_form_not_its_stored_dict():
    """A map's row target is stored as {form, mask_size, threshold}; the report's picture titles read
    `region, 6588 values > 0` (they showed the raw dict, and "predicted None" for a map)."""
    from onnx_attr.app.report_html import _target_text

    assert _target_text({"form": "region", "mask_size": 6588, "threshold": 0.0}) == "region, 6588 values > 0"
    assert _target_text(3) == "3" and _target_text(None) == "—"
