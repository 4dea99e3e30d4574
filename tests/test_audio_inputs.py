"""Audio files as inputs: a .wav read to samples in [-1, 1], fed as the waveform, with a sample-rate
input given the file's rate and the states a streaming model feeds back starting at zeros.

Oracles: the integers written into each file (value / 2^(bits-1), 8-bit centred on 128); the
channel mean computed here; onnxruntime on the .onnx file, fed the same samples, rate and zeros,
for completeness (Σ attributions = f(x) - f(0)) and for the value the model computes; the error
messages for what audio cannot give.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_attr import InputError
from onnx_attr.app.audio_inputs import AudioPreprocessing, AudioRows, load_audio
from onnx_attr.app.cli import main
from onnx_attr.importing.specs import TensorSpec

RNG = np.random.default_rng(7)


def _wav(path: Path, frames: np.ndarray, rate: int = 16000, width: int = 2) -> Path:
    """Integer PCM frames [T, C] written as they are (8-bit: unsigned)."""
    frames = np.asarray(frames)
    raw = {1: frames.astype(np.uint8).tobytes(), 2: frames.astype("<i2").tobytes(), 4: frames.astype("<i4").tobytes(),
           3: frames.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()}[width]
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(frames.shape[1])
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(raw)
    return path


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_scaled_by_hand(tmp_path, width):
    bits = 8 * width
    low, high = (0, 255) if width == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    frames = RNG.integers(low, high, size=(300, 2), endpoint=True)
    frames[:2] = [[low, high], [high, low]]  # the extremes
    samples, rate = load_audio(_wav(tmp_path / "a.wav", frames, 22050, width))
    expected = (frames - 128) / 128.0 if width == 1 else frames / 2.0 ** (bits - 1)
    assert rate == 22050 and samples.shape == (2, 300) and samples.dtype == np.float32
    assert np.allclose(samples, expected.T, rtol=0, atol=1e-7)
    assert samples.min() >= -1 and samples.max() <= 1  # 32-bit: (2^31 - 1) / 2^31 rounds to 1 in float32


def _vad(tmp_path: Path, channels_axis: bool = False, fixed: int | None = None) -> Path:
    """A streaming detector in silero-vad's shape: input [N, T] (or [N, C, T]), state [2, N, 4] fed
    back as stateN, sr [] an int64 rate. out = tanh(mean_t(x·w_t)·(sr/16000) + Σ state·v): the rate and
    the state both change the value, so feeding the wrong one shows."""
    t = fixed or "T"
    x_shape = ["N", 2, t] if channels_axis else ["N", t]
    weights = numpy_helper.from_array(np.array([[0.7], [-1.3], [0.4], [2.1]], np.float32), "v")
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2] if channels_axis else [1], keepdims=0),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "k16"], ["ratio"]),
        helper.make_node("Mul", ["m", "ratio"], ["scaled"]),
        helper.make_node("Transpose", ["state"], ["s_t"], perm=[1, 0, 2]),  # [N, 2, 4]
        helper.make_node("MatMul", ["s_t", "v"], ["sv"]),  # [N, 2, 1]
        helper.make_node("ReduceSum", ["sv", "ax12"], ["ssum"], keepdims=0),  # [N]
        helper.make_node("Add", ["scaled", "ssum"], ["pre"]),
        helper.make_node("Unsqueeze", ["pre", "ax1"], ["pre2"]),
        helper.make_node("Tanh", ["pre2"], ["output"]),
        helper.make_node("Add", ["state", "half"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 4])],
        [weights, numpy_helper.from_array(np.array(16000.0, np.float32), "k16"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "ax12"),
         numpy_helper.from_array(np.array([1], np.int64), "ax1"),
         numpy_helper.from_array(np.float32(0.5), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / "vad.onnx"
    onnx.save(model, path)
    return path


def _ort(path: Path, feeds: dict) -> float:
    return float(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["output"], feeds)[0][0, 0])


def test_wav_feeds_waveform_rate_and_zero_state(tmp_path, capsys):
    model = _vad(tmp_path)
    frames = RNG.integers(2000, 20000, size=(400, 1))  # a DC offset: the mean moves
    wav = _wav(tmp_path / "speech.wav", frames, rate=8000)
    out = tmp_path / "out"
    assert main(["attribute", str(model), "-i", str(wav), "-o", str(out), "-q"]) == 0
    attributions = np.load(out / "attributions.npz")
    samples = (frames[:, 0] / 32768.0).astype(np.float32)[None]
    feeds = {"x": samples, "state": np.zeros((2, 1, 4), np.float32), "sr": np.array(8000, np.int64)}
    change = _ort(model, feeds) - _ort(model, {**feeds, "x": np.zeros_like(samples)})
    assert abs(change) > 0.05  # the rate (8000, not 16000) halves it: a wrong rate would not add up
    total = sum(float(attributions[k].astype(np.float64).sum()) for k in attributions.files)
    assert total == pytest.approx(change, rel=1e-5, abs=1e-7)
    assert attributions["x"].shape == (1, 400) and attributions["state"].shape == (2, 1, 4)
    assert not attributions["state"].any()  # zeros at the input and at the baseline: nothing to explain
    report = json.loads((out / "report.json").read_text())
    audio = report["manifest"]["options"]["preprocessing"]["audio"]
    assert audio["input"] == "x" and audio["zero_states"] == ["state"] and audio["rate_inputs"] == ["sr"]


def test_scale_and_stereo_mixed_down(tmp_path):
    """[N, T] takes one channel: the mean of the file's two, times --audio-scale (the int16 range)."""
    model = _vad(tmp_path)
    frames = RNG.integers(-30000, 30000, size=(256, 2))
    wav = _wav(tmp_path / "stereo.wav", frames)
    out = tmp_path / "out"
    assert main(["attribute", str(model), "-i", str(wav), "-o", str(out), "-q", "--audio-scale", "32768",
                 "--method", "inputxgradient"]) == 0
    attributions = np.load(out / "attributions.npz")["x"][0]
    mixed = frames.mean(axis=1) / 32768.0 * 32768.0
    feeds = {"x": mixed.astype(np.float32)[None], "state": np.zeros((2, 1, 4), np.float32),
             "sr": np.array(16000, np.int64)}
    value = _ort(model, feeds)
    # x·∂f/∂x by hand: f = tanh(mean(x)), ∂f/∂x_t = (1 - f²) / T
    assert np.allclose(attributions, mixed * (1 - value**2) / 256, rtol=1e-4, atol=1e-6)


def test_channels_kept_where_the_model_takes_them(tmp_path):
    model = _vad(tmp_path, channels_axis=True)
    frames = RNG.integers(-3000, 30000, size=(128, 2))
    out = tmp_path / "out"
    assert main(["attribute", str(model), "-i", str(_wav(tmp_path / "s.wav", frames)), "-o", str(out), "-q"]) == 0
    x = np.load(out / "attributions.npz")["x"]
    assert x.shape == (1, 2, 128)
    samples = (frames.T / 32768.0).astype(np.float32)[None]
    feeds = {"x": samples, "state": np.zeros((2, 1, 4), np.float32), "sr": np.array(16000, np.int64)}
    change = _ort(model, feeds) - _ort(model, {**feeds, "x": np.zeros_like(samples)})
    assert float(x.astype(np.float64).sum()) == pytest.approx(change, rel=1e-5)


def test_what_audio_cannot_give_is_refused(tmp_path, capsys):
    model = _vad(tmp_path, fixed=512)
    wav = _wav(tmp_path / "a.wav", RNG.integers(-100, 100, size=(400, 1)), rate=8000)
    assert main(["attribute", str(model), "-i", str(wav), "-o", str(tmp_path / "o")]) == 2
    assert "takes exactly 512 a call" in capsys.readouterr().err
    assert main(["attribute", str(_vad(tmp_path)), "-i", str(wav), "-o", str(tmp_path / "o"),
                 "--sample-rate", "16000"]) == 2
    err = capsys.readouterr().err
    assert "at 8000 Hz, where --sample-rate says 16000 Hz" in err and "ffmpeg -i in.wav -ar 16000" in err
    specs = [TensorSpec("x", ("N", "T"), np.dtype("float32")), TensorSpec("speaker", ("N", 16), np.dtype("float32"))]
    with pytest.raises(InputError, match=r"has 2 that could be it.*--audio-input"):
        AudioRows(specs, AudioPreprocessing(), {"x": 0, "speaker": 0})
    with pytest.raises(InputError, match=r"also takes \['speaker'\], which audio cannot give"):
        AudioRows(specs, AudioPreprocessing(input="x"), {"x": 0, "speaker": 0})
    flac = tmp_path / "a.flac"
    flac.write_bytes(b"fLaC")
    try:
        import soundfile  # noqa: F401
    except (ImportError, OSError):
        with pytest.raises(InputError, match="needs soundfile"):
            load_audio(flac)
    else:  # a broken FLAC is the user's error, not libsndfile's raw one
        with pytest.raises(InputError, match="cannot read .* as audio"):
            load_audio(flac)
    with pytest.raises(InputError, match="finite"):
        AudioPreprocessing(scale=float("nan"))


def test_dataset_of_files_of_several_lengths(tmp_path):
    """Each file is its own source: files of other lengths make rows of their own, each complete."""
    model = _vad(tmp_path)
    folder = tmp_path / "clips"
    folder.mkdir()
    clips = {"a.wav": RNG.integers(-9000, 9000, size=(300, 1)), "b.wav": RNG.integers(-9000, 9000, size=(500, 1))}
    for name, frames in clips.items():
        _wav(folder / name, frames)
    out = tmp_path / "out"
    assert main(["dataset", str(model), "-i", str(folder), "-o", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_computed"] == 2 and summary["error_rows_computed"] == 0
    import pyarrow.parquet as pq

    rows = [r for shard in sorted(out.glob("*.parquet")) for r in pq.read_table(shard).to_pylist()]
    assert sorted(r["source"] for r in rows) == ["a.wav", "b.wav"]
    for row in rows:
        frames = clips[row["source"]]
        samples = (frames[:, 0] / 32768.0).astype(np.float32)[None]
        feeds = {"x": samples, "state": np.zeros((2, 1, 4), np.float32), "sr": np.array(16000, np.int64)}
        assert row["status"] == "ok" and row["output"] == pytest.approx(_ort(model, feeds), rel=1e-5)
    # the mean per feature is over rows of the first one's length, and says what it left out
    page = (out / "report.html").read_text()
    assert "1 ok rows of another shape are left out" in page
    assert "could not read row" not in page  # the pictures re-read each clip with the recorded settings


def test_api_reads_the_same_inputs(tmp_path):
    """`onnx_attr.read_inputs` gives the model's inputs as the model takes them: the state's rows on its
    axis 1, the rate as its 0-d int64; fed to onnxruntime, they give the CLI's run's value."""
    import onnx_attr

    path = _vad(tmp_path)
    frames = RNG.integers(-9000, 9000, size=(200, 1))
    inputs = onnx_attr.read_inputs(_wav(tmp_path / "a.wav", frames, rate=8000), onnx_attr.load(str(path)))
    assert set(inputs) == {"x", "state", "sr"}
    assert inputs["state"].shape == (2, 1, 4) and not inputs["state"].any()
    assert inputs["sr"].shape == () and inputs["sr"].dtype == np.int64 and int(inputs["sr"]) == 8000
    assert np.array_equal(inputs["x"], (frames.T / 32768.0).astype(np.float32))


def test_cut_and_broken_files(tmp_path):
    """A file cut short gives its whole frames (an odd byte dropped); one cut inside its header, or not a
    WAVE file, is the user's error, never a raw exception."""
    frames = RNG.integers(-9000, 9000, size=(100, 2))
    whole = _wav(tmp_path / "a.wav", frames).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[:44 + 4 * 37 + 3])  # 37 frames of 2 x 16 bits, and 3 bytes of the next
    samples, _ = load_audio(cut)
    assert np.array_equal(samples, (frames[:37].T / 32768.0).astype(np.float32))
    for name, content in (("header.wav", whole[:30]), ("junk.wav", b"RIFF\0\0\0\0WAVEjunk"),
                          ("empty.wav", whole[:44])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError):
            load_audio(tmp_path / name)


def test_verify_reads_the_clip_as_attribute_does(tmp_path, capsys, monkeypatch):
    """`verify --input clip.wav` checks the import on the clip's own samples, rate and zero state: the
    inputs it hands to the check are the ones built here from the file's integers."""
    import onnx_attr.importing.model as model_module

    path = _vad(tmp_path)
    frames = RNG.integers(-9000, 9000, size=(300, 1))
    seen = {}
    verify = model_module.AttributableModel.verify

    def spy(self, inputs=None, **kwargs):
        seen.update(inputs or {})
        return verify(self, inputs, **kwargs)

    monkeypatch.setattr(model_module.AttributableModel, "verify", spy)
    assert main(["verify", str(path), "--input", str(_wav(tmp_path / "a.wav", frames, rate=8000)),
                 "--audio-scale", "2"]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert np.array_equal(seen["x"], (2 * frames.T / 32768.0).astype(np.float32))
    assert int(seen["sr"]) == 8000 and seen["state"].shape == (2, 1, 4) and not seen["state"].any()


def test_a_clip_gets_its_picture_over_time(tmp_path):
    model = _vad(tmp_path)
    out = tmp_path / "out"
    wav = _wav(tmp_path / "long.wav", RNG.integers(-9000, 9000, size=(8000, 1)))
    assert main(["attribute", str(model), "-i", str(wav), "-o", str(out), "-q"]) == 0
    assert (out / "waveform_x_0.png").exists()  # without --plot, as an image's heatmap


def test_a_model_of_one_clip_without_a_batch_axis(tmp_path, capsys):
    """A [T] input is one clip's samples: `attribute` feeds the file as it is (complete against onnxruntime);
    a dataset, whose rows are stacked, says to use `attribute` instead."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["s"]),
                               helper.make_node("ReduceMean", ["s"], ["y"], keepdims=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    frames = RNG.integers(-20000, 20000, size=(700, 1))
    wav = _wav(tmp_path / "a.wav", frames)
    out = tmp_path / "out"
    assert main(["attribute", str(path), "-i", str(wav), "-o", str(out), "-q"]) == 0
    x = np.load(out / "attributions.npz")["x"]
    samples = (frames[:, 0] / 32768.0).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    change = float(session.run(None, {"x": samples})[0][0])  # f(0) = 0
    assert x.shape == (700,) and float(x.astype(np.float64).sum()) == pytest.approx(change, rel=1e-5)
    assert main(["dataset", str(path), "-i", str(wav), "-o", str(tmp_path / "d")]) == 2
    assert "without a batch axis" in capsys.readouterr().err


def test_a_clip_of_a_length_the_model_cannot_run_says_so(tmp_path, capsys):
    """silero-vad v5 declares [?, ?] and takes 512 samples a call at 16 kHz: a 1 s clip failed deep in its
    graph. The error now says what length the clip had and that a streaming model takes a fixed one."""
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                               helper.make_node("ReduceMean", ["r"], ["y"], axes=[1, 2], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
                              [numpy_helper.from_array(np.array([-1, 4, 128], np.int64), "shape")])
    path = tmp_path / "chunk.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    wav = _wav(tmp_path / "a.wav", RNG.integers(-100, 100, size=(300, 1)))
    assert main(["attribute", str(path), "-i", str(wav), "-o", str(tmp_path / "o")]) == 2
    assert "did not run on this clip's 300 samples" in capsys.readouterr().err


def test_a_folder_run_says_its_largest_relative_delta(tmp_path, capsys):
    """hunt 37: a folder run printed only the largest |delta| (0.88 on a segmenter whose relative delta was
    8e-8): read alone, a failed convergence. The relative figure stands beside it, the same as each
    file's report says."""
    model = _vad(tmp_path)
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.wav", "b.wav"):
        _wav(folder / name, RNG.integers(2000, 20000, size=(300, 1)))
    out = tmp_path / "out"
    assert main(["attribute", str(model), "-i", str(folder), "-o", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "largest |delta|" in x)
    worst = max(json.loads((out / n / "report.json").read_text())["max_relative_delta"] for n in ("a.wav", "b.wav"))
    assert f"largest relative {worst:.3e}" in line


def _float_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """A 32-bit IEEE-float WAV (format tag 3) written byte by byte: the standard library reads only PCM."""
    import struct

    data = samples.astype("<f4").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 3, 1, rate, rate * 4, 4, 32) + b"data" + struct.pack("<I", len(data))
    path.write_bytes(header + data)
    return path


def test_float_wav_and_flac_through_soundfile(tmp_path):
    """What the standard library cannot read goes to soundfile: a float WAV (the samples written, bit for
    bit) and a FLAC of known integers (lossless)."""
    soundfile = pytest.importorskip("soundfile")
    samples = (RNG.standard_normal(500) * 0.3).astype(np.float32)
    read, rate = load_audio(_float_wav(tmp_path / "f.wav", samples, 22050))
    assert rate == 22050 and read.shape == (1, 500) and np.array_equal(read[0], samples)
    frames = RNG.integers(-30000, 30000, size=(400, 2)).astype(np.int16)
    soundfile.write(str(tmp_path / "c.flac"), frames, 16000, subtype="PCM_16")
    read, rate = load_audio(tmp_path / "c.flac")
    assert rate == 16000 and np.allclose(read, frames.T / 32768.0, rtol=0, atol=1e-7)


def test_without_soundfile_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    import onnx_attr.app.audio_inputs as audio

    monkeypatch.setattr(audio, "_have_soundfile", lambda: False)
    with pytest.raises(InputError, match=r"needs soundfile: pip install soundfile .*ffmpeg"):
        load_audio(tmp_path / "a.flac")
    with pytest.raises(InputError, match=r"standard library's wave \(unknown format: 3\).*pip install soundfile"):
        load_audio(_float_wav(tmp_path / "f.wav", np.zeros(10, np.float32), 8000))


def test_an_enhancers_waveform_named_as_its_output_is_not_a_state(tmp_path):
    """`audio` in, `audio_out` out: the state rule's names, but the model's one input is the waveform; it is
    fed the clip, never zeros (review of session 49). Oracle: the samples written."""
    spec = TensorSpec("audio", ("N", "T"), np.dtype("float32"))
    frames = RNG.integers(-9000, 9000, size=(300, 1))
    for prep in (AudioPreprocessing(states=("audio",)), AudioPreprocessing(input="audio", states=("audio",))):
        rows, held = AudioRows([spec], prep, {"audio": 0}).rows(_wav(tmp_path / "a.wav", frames))
        assert np.array_equal(rows["audio"][0], (frames[:, 0] / 32768.0).astype(np.float32)) and not held


def test_a_streamed_wav_whose_header_declares_no_length(tmp_path):
    """ffmpeg writing to a pipe leaves the data size 0xFFFFFFFF: read as the samples the file holds, not
    refused as two billion of them."""
    import struct

    frames = RNG.integers(-9000, 9000, size=(250, 1))
    raw = bytearray(_wav(tmp_path / "a.wav", frames).read_bytes())
    raw[40:44] = struct.pack("<I", 0xFFFFFFFF)  # the data chunk's size
    (tmp_path / "s.wav").write_bytes(bytes(raw))
    samples, _ = load_audio(tmp_path / "s.wav")
    assert np.array_equal(samples[0], (frames[:, 0] / 32768.0).astype(np.float32))
