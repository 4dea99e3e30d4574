"""Audio files as a waveform input: one row per file.

A .wav of integer PCM is read by the standard library's `wave`; float WAV, FLAC, Ogg and the rest
by soundfile (libsndfile), where it is installed (`pip install 'onnx-attr[audio]'`). Samples come
out in [-1, 1], as torchaudio, librosa and soundfile give them, times `scale` (32768 for a model
that takes int16-range values). Nothing is resampled here: a resampler is its own craft, and a
model's rate is not in the file, so `rate` (the CLI's --sample-rate) only checks the file's. Channels
are mixed down to one unless the model takes the file's channel count. What audio cannot give is
filled the way the model's own package starts a stream: a sample-rate input takes the file's rate,
and a recurrent state the model feeds back (`state` in, `stateN` out) starts at zeros. Any other
input is the user's to give, in an .npz.
"""

from __future__ import annotations

import re
import wave
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from onnx_attr.errors import InputError
from onnx_attr.importing.specs import TensorSpec, names_next_state

#: Most samples (all channels) read from one audio file: 2^27, about 23 minutes of 16 kHz stereo,
#: 512 MiB as float32; a longer file is refused before its samples are read.
MAX_AUDIO_SAMPLES = 2**27
#: input names that say the model reads the sample rate (silero-vad's `sr`)
RATE_NAME = re.compile(r"^(sr|fs|rate|sample_?rate|sampling_?rate|sample_?rate_?hz)$", re.IGNORECASE)
_SOUNDFILE = "pip install soundfile (or 'onnx-attr[audio]')"


@dataclass(frozen=True)
class AudioPreprocessing:
    """How an audio file becomes the waveform input (picklable for Ray)."""

    #: the rate the model takes (Hz): a file at another rate is refused, not resampled
    rate: Optional[int] = None
    #: samples in [-1, 1] are multiplied by it (32768: the int16 range some front ends take)
    scale: float = 1.0
    #: the waveform input (default: the model's one floating input with a free or long last axis)
    input: Optional[str] = None
    #: inputs that start at zeros: recurrent states the model feeds back (`fed_back_states`)
    states: tuple[str, ...] = ()

    def __post_init__(self):
        if not np.isfinite(self.scale) or self.scale == 0:
            raise InputError(f"the audio scale must be a finite number other than 0, not {self.scale}")

    def to_dict(self) -> dict[str, Any]:
        return {"sample_rate": self.rate if self.rate is not None else "the file's", "scale": self.scale,
                "channels": "mixed down to one unless the model takes the file's count",
                **({"zero_states": list(self.states)} if self.states else {})}

    @classmethod
    def recorded(cls, record: dict[str, Any]) -> "AudioPreprocessing":
        """The settings a manifest recorded (`to_dict`, with the input's name beside them)."""
        rate, scale = record.get("sample_rate"), record.get("scale", 1.0)
        if not isinstance(scale, (int, float)):
            raise InputError(f"the manifest's audio scale {scale!r} is not a number: the run's manifest is damaged")
        return cls(rate=rate if isinstance(rate, int) else None, scale=float(scale),
                   input=record.get("input"), states=tuple(record.get("zero_states", ())))


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples [channels, T] as float32 in [-1, 1], rate in Hz) of one audio file."""
    path = Path(path)
    if path.suffix.lower() == ".wav":
        try:
            return _read_wave(path)
        except (wave.Error, EOFError) as err:
            why = str(err) or "the file ends inside its header"  # or float / extensible WAV: integer PCM only
        if not _have_soundfile():
            raise InputError(f"cannot read {str(path)!r} with the standard library's wave ({why}); soundfile reads "
                             f"other WAV encodings: {_SOUNDFILE}, or convert it to 16-bit PCM .wav")
    elif not _have_soundfile():
        raise InputError(f"reading {path.suffix} audio needs soundfile: {_SOUNDFILE}, or convert "
                         f"{str(path)!r} to 16-bit PCM .wav (ffmpeg -i in{path.suffix} -c:a pcm_s16le out.wav)")
    return _read_soundfile(path)


def _read_wave(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as handle:
        channels, width, rate, frames = (handle.getnchannels(), handle.getsampwidth(), handle.getframerate(),
                                         handle.getnframes())
        if channels >= 1 and width >= 1:  # a stream's header (ffmpeg to a pipe) declares 0xFFFFFFFF bytes: the
            frames = min(frames, path.stat().st_size // (channels * width))  # file holds at most this many
        _check_size(path, channels, frames, rate)
        data = handle.readframes(frames)
    data = data[:len(data) - len(data) % (channels * width)]  # a file cut short: its whole frames
    if not data:
        raise InputError(f"{str(path)!r} holds no whole audio frame")
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # 24-bit: three little-endian bytes, widened to int32 in the top three
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3)
        wide = np.zeros((len(raw), 4), np.uint8)
        wide[:, 1:] = raw
        samples = wide.view("<i4").reshape(-1).astype(np.float32) / 2.0**31
    elif width in (2, 4):
        kind = "<i2" if width == 2 else "<i4"
        samples = np.frombuffer(data, kind).astype(np.float32) / float(2 ** (8 * width - 1))
    else:
        raise InputError(f"{str(path)!r} has {8 * width}-bit samples; give 8, 16, 24 or 32-bit PCM")
    return samples.reshape(-1, channels).T.copy(), rate


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        info = soundfile.info(str(path))
        _check_size(path, info.channels, info.frames, info.samplerate)
        most = MAX_AUDIO_SAMPLES // info.channels  # the header's count may be wrong (an Ogg's last granule):
        samples, rate = soundfile.read(str(path), frames=most + 1, dtype="float32", always_2d=True)  # read bounded
    except (RuntimeError, TypeError, ValueError) as err:  # libsndfile's errors are RuntimeErrors
        raise InputError(f"cannot read {str(path)!r} as audio: {err}") from None
    if len(samples) > most:
        _check_size(path, info.channels, len(samples) * 2, int(rate))  # refused, with the limit said
    return samples.T.copy(), int(rate)


def _check_size(path: Path, channels: int, frames: int, rate: int) -> None:
    if channels < 1 or rate < 1:
        raise InputError(f"{str(path)!r} declares {channels} channel(s) at {rate} Hz: not audio to read")
    if channels * frames > MAX_AUDIO_SAMPLES:
        raise InputError(f"{str(path)!r} holds {channels} x {frames:,} samples, more than the {MAX_AUDIO_SAMPLES:,} "
                         "read from one audio file: cut it into parts, one file each")
    if frames == 0:
        raise InputError(f"{str(path)!r} holds no samples")


def _have_soundfile() -> bool:
    try:
        import soundfile  # noqa: F401
    except (ImportError, OSError):  # OSError: the package without its libsndfile
        return False
    return True


def waveform_input(specs: Sequence[TensorSpec], name: Optional[str], held: Sequence[str] = ()) -> TensorSpec:
    """The input audio feeds: the one named, else the one floating input of rank 1 to 3 that is not a
    state the model feeds back (`held`)."""
    if name is not None:
        found = next((s for s in specs if s.name == name), None)
        if found is None or not found.differentiable:
            raise InputError(f"--audio-input {name!r} is not a floating input of the model; its inputs are "
                             f"{[s.describe() for s in specs]}")
        return found
    signals = [s for s in specs if s.differentiable and s.shape is not None and 1 <= len(s.shape) <= 3]
    fits = [s for s in signals if s.name not in held]
    if not fits and len(signals) == 1:  # its one input is named as the output's (`audio` in, `audio_out` out:
        fits = signals  # an enhancer), which the state rule reads as a state: it is the waveform
    if len(fits) != 1:
        raise InputError("audio files feed one waveform input ([N, T], [N, C, T] or [T]); "
                         + (f"this model has {len(fits)} that could be it, {[s.name for s in fits]}: name it with "
                            "--audio-input NAME" if fits else f"this model's inputs are {[s.describe() for s in specs]}"))
    return fits[0]


def fed_back_states(model: Any) -> tuple[str, ...]:
    """The floating inputs the model outputs the next value of (silero-vad's `state` -> `stateN`, `h`
    -> `hn`): a stream's state, zeros at its start."""
    return tuple(s.name for s in model.inputs
                 if s.differentiable and any(names_next_state(s.name, o.name) for o in model.outputs))


class AudioRows:
    """Builds the inputs of one audio file: the waveform shaped as the model takes it, the rate input
    and the zero states; every file of a run must share the first one's rate where a rate input
    takes it (one value goes with every row)."""

    def __init__(self, specs: Sequence[TensorSpec], prep: AudioPreprocessing, axes: dict[str, Optional[int]]):
        self.specs = list(specs)
        self.axes = axes
        self.spec = waveform_input(specs, prep.input, prep.states)
        # the waveform is never zeroed as a state, whatever its name says
        self.prep = prep = replace(prep, states=tuple(n for n in prep.states if n != self.spec.name))
        self.rate_inputs = [s for s in specs if s.name != self.spec.name and RATE_NAME.match(s.name)
                            and s.dtype is not None and s.dtype.kind in "iuf" and s.shape is not None
                            and all(d == 1 for d in s.shape)]  # 0-d, or [1]
        given = {self.spec.name, *prep.states, *(s.name for s in self.rate_inputs)}
        others = [s.name for s in specs if s.name not in given]
        if others:
            raise InputError(f"audio files feed input {self.spec.name!r}"
                             + (f", its sample rate {[s.name for s in self.rate_inputs]}" if self.rate_inputs else "")
                             + (f" and zero states {list(prep.states)}" if prep.states else "")
                             + f"; the model also takes {others}, which audio cannot give: save all inputs in an "
                             ".npz instead")
        self.rate: Optional[int] = None  # the run's (this reader's: a Ray worker's), once its first file is read

    def row(self, path: str | Path) -> dict[str, np.ndarray]:
        """One example of every input audio gives (the waveform without its batch axis)."""
        samples, rate = load_audio(path)
        expected = self.prep.rate or (self.rate if self.rate_inputs else None)
        if expected is not None and rate != expected:
            said = "--sample-rate" if self.prep.rate else "the run's first file"
            raise InputError(f"{str(path)!r} is at {rate} Hz, where {said} says {expected} Hz: nothing is resampled "
                             f"here; resample it first (ffmpeg -i in.wav -ar {expected} out.wav)")
        self.rate = rate
        shape = self._example_shape()
        channels = shape[0] if len(shape) == 2 else 1
        if channels != samples.shape[0]:
            if channels != 1:
                raise InputError(f"{str(path)!r} has {samples.shape[0]} channel(s); input {self.spec.name!r} "
                                 f"{list(self.spec.shape or ())} takes {channels}: if that input is not a waveform "
                                 "(features, a spectrogram), save its values in an .npz")
            samples = samples.mean(axis=0, keepdims=True)
        length = shape[-1]
        if isinstance(length, int) and samples.shape[1] != length:
            raise InputError(f"{str(path)!r} holds {samples.shape[1]:,} samples at {rate} Hz; input {self.spec.name!r} "
                             f"takes exactly {length:,} a call: cut the part to explain (a file, or an .npz) of that "
                             "length")
        wave_row = (samples * np.float32(self.prep.scale)).astype(self.spec.dtype or np.float32)
        out = {self.spec.name: wave_row if len(shape) == 2 else wave_row[0]}
        for name in self.prep.states:
            out[name] = np.zeros(self._state_shape(name), dtype=self._spec(name).dtype or np.float32)
        return out

    def held(self) -> dict[str, np.ndarray]:
        """The rate inputs, at the run's rate (the first file's)."""
        return {s.name: np.full(s.shape, self.rate, dtype=s.dtype) for s in self.rate_inputs}

    def rows(self, path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One file as (inputs with a row axis first, inputs fed as they are): an unbatched waveform [T]
        goes with the latter, as a 0-d setting does."""
        example = self.row(path)
        held = self.held()
        if self.unbatched:
            held[self.spec.name] = example.pop(self.spec.name)
        return {k: v[None] for k, v in example.items()}, held

    def _spec(self, name: str) -> TensorSpec:
        return next(s for s in self.specs if s.name == name)

    @property
    def unbatched(self) -> bool:
        """The waveform input is one example's samples [T], without a batch axis: fed as it is."""
        return len(self.spec.shape or ()) == 1

    def _one_example(self, spec: TensorSpec) -> list:
        """`spec`'s shape without its batch axis (all of it for an unbatched waveform [T])."""
        shape = list(spec.shape or ())
        axis = self.axes.get(spec.name)
        if axis is not None and axis < len(shape) and not (spec is self.spec and self.unbatched):
            del shape[axis]
        return shape

    def _example_shape(self) -> tuple:
        """The waveform input's shape without its batch axis: (T,) or (C, T)."""
        shape = self._one_example(self.spec)
        if not 1 <= len(shape) <= 2:
            raise InputError(f"input {self.spec.name!r} {list(self.spec.shape or ())} is not a waveform [N, T] or "
                             "[N, C, T]: save its values in an .npz")
        return tuple(shape)

    def _state_shape(self, name: str) -> tuple[int, ...]:
        spec = self._spec(name)
        shape = self._one_example(spec)
        if not all(isinstance(d, int) for d in shape):
            raise InputError(f"state input {name!r} has shape {list(spec.shape or ())}: its size besides "
                             "the batch is not fixed, so its zeros cannot be made; save all inputs in an .npz")
        return tuple(shape)  # type: ignore[return-value]
