"""Save results: 16-bit mono WAV (stdlib `wave`) and the `.npz` of tokens and audio."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from .constants import SAMPLE_RATE


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """float samples [n] in [-1, 1] -> 16-bit PCM WAV."""
    pcm = np.round(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def write_result_npz(path: str | Path, segments: list, audio: np.ndarray) -> None:
    """segments: objects with .text, .semantic [N], .coarse [2, T], .fine [8, T] (concatenated in the file)."""
    np.savez(
        path,
        semantic=np.concatenate([s.semantic for s in segments]).astype(np.int64),
        coarse=np.concatenate([s.coarse for s in segments], axis=1).astype(np.int64),
        fine=np.concatenate([s.fine for s in segments], axis=1).astype(np.int64),
        audio=np.asarray(audio, dtype=np.float32),
        segment_texts=np.array([s.text for s in segments]),
        segment_frames=np.array([s.fine.shape[1] for s in segments], dtype=np.int64),
    )
