"""Offline generation: Bark's algorithm, stage after stage, for one utterance.

Our equivalent of Suno's `generate_audio` (same defaults), built on our models.
It is the reference the streaming pipeline is compared with, and what the
`python -m streaming` command runs in offline mode.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .constants import (
    COARSE_WINDOW_LEN,
)
from .bark import coarse_step, generate_fine, segment_history, segment_seed, semantic_cap, semantic_step
from .models.bundle import BarkModels
from .params import SamplingParams
from .prompts import (
    COARSE_HEAD_ROWS,
    coarse_history,
    coarse_n_steps,
    coarse_window_prompt,
    coarse_window_semantic_span,
    semantic_prompt,
    unflatten_coarse,
)
from .sampling import StreamRng, make_generator

logger = logging.getLogger(__name__)


def _voice_arrays(voice) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    if voice is None:
        return None, None, None
    return voice.semantic, voice.coarse, voice.fine


def _tensor(tokens: np.ndarray, models: BarkModels) -> torch.Tensor:
    return torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=models.device)


def generate_semantic(
    models: BarkModels, text_ids: list[int], voice, params: SamplingParams, generator: StreamRng
) -> np.ndarray:
    """Semantic tokens int64 [N] for already tokenised text (Bark's `generate_text_semantic`)."""
    sem_hist, _, _ = _voice_arrays(voice)
    prompt = _tensor(semantic_prompt(text_ids, sem_hist), models)[None]  # [1, 513]
    cache = models.text.new_cache(1)
    logits = models.text.prefill(prompt, cache, [0], merge_context=True)  # [1, V]
    out: list[int] = []
    while True:
        tokens, ended = semantic_step(logits, [params], [generator])
        if ended[0]:
            break
        out.append(int(tokens[0]))
        if len(out) >= semantic_cap(params):
            break
        logits = models.text.decode(_tensor(tokens, models), cache, [0])
    return np.asarray(out, dtype=np.int64)


def generate_coarse(
    models: BarkModels, semantic: np.ndarray, voice, params: SamplingParams, generator: StreamRng
) -> np.ndarray:
    """Coarse codes int64 [2, T] (Bark's `generate_coarse`: 60-step sliding windows)."""
    sem_hist, coarse_hist = coarse_history(*_voice_arrays(voice)[:2])
    x_semantic = np.concatenate([sem_hist, np.asarray(semantic, dtype=np.int64)])
    x_coarse = list(coarse_hist)
    n_steps = coarse_n_steps(len(semantic))
    cache = models.coarse.new_cache(1)
    n_step = 0
    for _ in range(math.ceil(n_steps / COARSE_WINDOW_LEN)):
        start, end = coarse_window_semantic_span(len(sem_hist), n_step)
        prompt = coarse_window_prompt(x_semantic[start:end], np.asarray(x_coarse, dtype=np.int64))
        logits = models.coarse.prefill(_tensor(prompt, models)[None], cache, [0], rows=COARSE_HEAD_ROWS)
        for i in range(COARSE_WINDOW_LEN):
            if n_step >= n_steps:
                break
            token = int(coarse_step(logits, [n_step], [params], [generator])[0])
            x_coarse.append(token)
            n_step += 1
            if i < COARSE_WINDOW_LEN - 1 and n_step < n_steps:
                logits = models.coarse.decode(_tensor([token], models), cache, [0], rows=COARSE_HEAD_ROWS)
    generated = np.asarray(x_coarse[len(coarse_hist):], dtype=np.int64)
    assert len(generated) == n_steps
    return unflatten_coarse(generated)


@dataclass
class OfflineResult:
    """Everything one offline run produced, with per-stage wall times."""

    semantic: np.ndarray  # int64 [N]
    coarse: np.ndarray  # int64 [2, T]
    fine: np.ndarray  # int64 [8, T]
    audio: np.ndarray  # float32 [T * 320], 24 kHz
    seconds: dict[str, float] = field(default_factory=dict)


def generate_audio(
    models: BarkModels, codec, tokenizer, text: str, voice=None, params: SamplingParams | None = None,
    *, allow_short: bool = False,
) -> OfflineResult:
    """Text -> audio, stage after stage (Suno's `generate_audio` with our models)."""
    from .codec import decode_codes
    from .text import normalize_whitespace
    from .errors import TextError

    params = params or SamplingParams()
    text = normalize_whitespace(text)
    if not text:
        raise TextError("text: is empty")
    gen = make_generator(params.seed)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    semantic = generate_semantic(models, tokenizer.encode(text), voice, params, gen)
    times["semantic"] = time.perf_counter() - t0
    if len(semantic) < 2 and not allow_short:
        raise TextError(f"text: produced only {len(semantic)} semantic tokens (EOS at once); nothing to say")
    t0 = time.perf_counter()
    coarse = generate_coarse(models, semantic, voice, params, gen)
    times["coarse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fine = generate_fine(models, coarse, voice, params, gen)
    times["fine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    audio = decode_codes(codec, fine) if fine.shape[1] else np.zeros(0, dtype=np.float32)
    times["decode"] = time.perf_counter() - t0
    return OfflineResult(semantic, coarse, fine, audio, times)


@dataclass
class LongResult:
    """Offline generation of text of any length: one OfflineResult per segment, audio joined."""

    segments: list[OfflineResult]
    texts: list[str]
    audio: np.ndarray  # float32, segments crossfaded at the joins


class _FirstSegmentVoice:
    """A finished segment's tokens used as the history of the following ones."""

    def __init__(self, first: OfflineResult) -> None:
        self.semantic, self.coarse, self.fine = first.semantic, first.coarse, first.fine


def generate_long(
    models: BarkModels, codec, tokenizer, text: str, voice=None, params: SamplingParams | None = None,
    *, overlap: int = 240,
) -> LongResult:
    """Split text as the streaming engine does, generate each segment offline, crossfade the joins.

    Voice history per segment follows the engine's rule: the preset when one is
    given, otherwise the first segment's own output (keeps one speaker).
    """
    from .codec import crossfade_join
    from .text import segment_text

    params = params or SamplingParams()
    texts = segment_text(text, tokenizer.count)
    results: list[OfflineResult] = []
    audio = np.zeros(0, dtype=np.float32)
    for i, piece in enumerate(texts):
        seg_params = dataclasses.replace(params, seed=segment_seed(params.seed, i))
        history = segment_history(voice, _FirstSegmentVoice(results[0]) if results else None, i)
        res = generate_audio(models, codec, tokenizer, piece, history, seg_params, allow_short=True)
        results.append(res)
        ov = min(overlap, len(audio), len(res.audio)) if i else 0
        audio = crossfade_join(audio, res.audio, ov)
    return LongResult(results, texts, audio)
