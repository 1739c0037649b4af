"""Speech as the papers use it (TIMIT, Blizzard): directories of 16-bit mono wav files.

Each file is read with the standard library's ``wave`` module (any sample rate), scaled to
[-1, 1), trimmed of leading and trailing silence, and cut into 0.5 s segments. A segment
becomes one sequence of frames: step t holds FW *consecutive* samples, so a segment of S
samples is a ``[S // FW, FW]`` sequence (samples past the last whole frame are dropped).

The authors' Blizzard loader did ``reshape(frame_size, -1)``, which puts halves of the
segment into channels instead of consecutive samples; that is a bug, not followed here.
"""

import warnings
import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_stcn.data.batching import Splits, held_out
from pyro_stcn.data.errors import DataError, check_finite, require_dir

SEGMENT_SECONDS = 0.5
SILENCE = 0.01  # |sample| below this (-40 dB of full scale) counts as silence


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples in [-1, 1) as float32, sample rate) of a 16-bit mono wav file."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate, frames = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise DataError(f"{path}: not a readable wav file ({e})") from e
    if channels != 1:
        raise DataError(f"{path}: {channels} channels; expected mono (1 channel)")
    if width != 2:
        raise DataError(f"{path}: {8 * width}-bit samples; expected 16-bit")
    if frames == 0:
        raise DataError(f"{path}: empty (0 samples)")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0, rate


def trim_silence(samples: np.ndarray, threshold: float = SILENCE) -> np.ndarray:
    """``samples`` without the leading and trailing run of samples quieter than ``threshold``."""
    loud = np.flatnonzero(np.abs(samples) >= threshold)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples[:0]


def frame_segments(samples: np.ndarray, rate: int, fw: int, where: str | Path) -> list[Tensor]:
    """0.5 s segments of ``samples`` as ``[segment // fw, fw]`` sequences of consecutive samples."""
    if not isinstance(fw, int) or isinstance(fw, bool) or fw < 1:
        raise DataError(f"frame width FW must be a positive integer, got {fw!r}")
    segment = int(rate * SEGMENT_SECONDS)
    if segment < fw:
        raise DataError(f"{where}: a 0.5 s segment at {rate} Hz has {segment} samples, fewer than FW = {fw}")
    steps = segment // fw
    count = len(samples) // segment
    if count == 0:
        raise DataError(f"{where}: {len(samples)} samples after trimming silence, shorter than one 0.5 s segment")
    usable = samples[: count * segment].reshape(count, segment)[:, : steps * fw]
    return [torch.from_numpy(s.reshape(steps, fw).copy()) for s in usable]


def wav_paths(directory: str | Path) -> list[Path]:
    """Every ``*.wav`` below ``directory``, sorted by path."""
    directory = require_dir(directory, "a directory of 16-bit mono wav files")
    paths = sorted(directory.rglob("*.wav"))
    if not paths:
        raise DataError(f"{directory}: no .wav files in it or below it")
    return paths


def load_wav_files(paths: list[Path], fw: int) -> list[list[Tensor]]:
    """The segments of each file, trimmed and framed, in order. Files shorter than one
    0.5 s segment after trimming give none; one warning counts them."""
    per_file, short = [], []
    for path in paths:
        samples, rate = read_wav(path)
        samples = trim_silence(check_finite(samples, path))
        if len(samples) < rate * SEGMENT_SECONDS:
            short.append(path)
            per_file.append([])
        else:
            per_file.append(frame_segments(samples, rate, fw, path))
    if len(short) == len(paths):
        raise DataError(f"{paths[0].parent}: every wav file is shorter than one 0.5 s segment after trimming silence")
    if short:
        warnings.warn(
            f"skipped {len(short)} of {len(paths)} wav files shorter than 0.5 s, e.g. {short[0]}", stacklevel=3
        )
    return per_file


def sample_rate(paths: list[Path]) -> int:
    """The one sample rate of all ``paths`` (from their headers): a frame of FW samples
    means the same duration only if they agree."""
    rates = {}
    for path in paths:
        try:
            with wave.open(str(path), "rb") as f:
                rates.setdefault(f.getframerate(), path)
        except (wave.Error, EOFError) as e:
            raise DataError(f"{path}: not a readable wav file ({e})") from e
    if len(rates) > 1:
        found = ", ".join(f"{rate} Hz ({path})" for rate, path in rates.items())
        raise DataError(f"wav files at different sample rates: {found}; resample them to one rate")
    return next(iter(rates))


def write_wav(path: str | Path, samples: Tensor, rate: int) -> None:
    """``samples`` in [-1, 1) as a 16-bit mono wav file (clipped to that range)."""
    pcm = (samples.detach().cpu().double().clamp(-1, 32767 / 32768) * 32768).round().short().numpy()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.astype("<i2").tobytes())


def load_wav_dir(directory: str | Path, fw: int) -> list[Tensor]:
    """Every ``*.wav`` below ``directory`` (sorted by path), trimmed, segmented and framed."""
    return [segment for segments in load_wav_files(wav_paths(directory), fw) for segment in segments]


def load_wav_splits(directory: str | Path, fw: int = 200, seed: int = 0) -> Splits:
    """TIMIT- or Blizzard-style speech: the wav files below ``directory`` split 80/10/10
    by file (seeded), so that no recording lends segments to both training and test."""
    paths = wav_paths(directory)
    if len(paths) < 3:
        raise DataError(f"{directory}: {len(paths)} wav files; a train/validation/test split needs at least 3")
    rate, per_file = sample_rate(paths), load_wav_files(paths, fw)
    splits = [[segment for i in idx for segment in per_file[i]] for idx in held_out(len(paths), 0.1, seed)]
    for name, segments in zip(("training", "validation", "test"), splits):
        if not segments:
            raise DataError(f"{directory}: the {name} split's files are all shorter than 0.5 s; add longer files")
    return Splits(*splits, likelihood="gmm", sample_rate=rate, kind="audio")
