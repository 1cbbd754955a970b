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
    CODEBOOK_SIZE,
    COARSE_WINDOW_LEN,
    FINE_HOP,
    FINE_PAD_TOKEN,
    FINE_WINDOW,
    MAX_SEMANTIC_STEPS,
    N_COARSE_CODEBOOKS,
    N_FINE_CODEBOOKS,
    SEMANTIC_PAD_TOKEN,
    SEMANTIC_VOCAB_SIZE,
)
from .models.bundle import BarkModels
from .models.fine_gpt import FineGPT
from .params import SamplingParams
from .prompts import (
    COARSE_HEAD_ROWS,
    coarse_history,
    coarse_logit_range,
    coarse_n_steps,
    coarse_window_prompt,
    coarse_window_semantic_span,
    fine_history,
    semantic_prompt,
    unflatten_coarse,
)
from .sampling import make_generator, sample

logger = logging.getLogger(__name__)


def _voice_arrays(voice) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    if voice is None:
        return None, None, None
    return voice.semantic, voice.coarse, voice.fine


def _tensor(tokens: np.ndarray, models: BarkModels) -> torch.Tensor:
    return torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=models.device)


def _row(logits: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """One row of logits [V] -> float32 cpu slice [hi - lo] for sampling."""
    return logits[lo:hi].float().cpu()


def generate_semantic(
    models: BarkModels, text_ids: list[int], voice, params: SamplingParams, generator: torch.Generator
) -> np.ndarray:
    """Semantic tokens int64 [N] for already tokenised text (Bark's `generate_text_semantic`)."""
    sem_hist, _, _ = _voice_arrays(voice)
    prompt = _tensor(semantic_prompt(text_ids, sem_hist), models)[None]  # [1, 513]
    cache = models.text.new_cache(1)
    logits = models.text.prefill(prompt, cache, [0], merge_context=True)  # [1, V]
    cap = params.max_semantic_tokens or MAX_SEMANTIC_STEPS
    out: list[int] = []
    for n in range(MAX_SEMANTIC_STEPS):
        relevant = _row(logits[0], 0, SEMANTIC_VOCAB_SIZE + 1)  # 10,000 tokens + EOS
        token, probs = sample(relevant, temp=params.text_temp, top_k=params.semantic_top_k,
                              top_p=params.top_p, generator=generator)
        eos_p = float(probs[-1]) if probs is not None else float(token == SEMANTIC_PAD_TOKEN)
        if token == SEMANTIC_PAD_TOKEN or eos_p >= params.min_eos_p:
            break
        out.append(token)
        if len(out) >= cap or n == MAX_SEMANTIC_STEPS - 1:
            break
        logits = models.text.decode(_tensor([token], models), cache, [0])
    return np.asarray(out, dtype=np.int64)


def generate_coarse(
    models: BarkModels, semantic: np.ndarray, voice, params: SamplingParams, generator: torch.Generator
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
            lo, hi = coarse_logit_range(n_step)
            first = COARSE_HEAD_ROWS[0]  # logits hold vocabulary rows [10000, 12048)
            code, _ = sample(_row(logits[0], lo - first, hi - first), temp=params.coarse_temp, top_k=params.semantic_top_k,
                             top_p=params.top_p, generator=generator)
            x_coarse.append(code + lo)
            n_step += 1
            if i < COARSE_WINDOW_LEN - 1 and n_step < n_steps:
                logits = models.coarse.decode(_tensor([code + lo], models), cache, [0], rows=COARSE_HEAD_ROWS)
    generated = np.asarray(x_coarse[len(coarse_hist):], dtype=np.int64)
    assert len(generated) == n_steps
    return unflatten_coarse(generated)


def fine_predict(
    model: FineGPT,
    windows: torch.Tensor,
    fill_from: int,
    n_given: int,
    temps: list[float | None],
    generators: list[torch.Generator],
) -> None:
    """Fill codebooks n_given..7 of windows [B, T, 8] in place at positions >= fill_from.

    Codebook by codebook, as Bark does: each prediction sees the codebooks
    filled before it. A temperature of None takes the argmax for that row.
    """
    for cb in range(n_given, N_FINE_CODEBOOKS):
        logits = model(cb, windows)[:, fill_from:, :CODEBOOK_SIZE]  # [B, T - fill_from, 1024]
        for b, (temp, gen) in enumerate(zip(temps, generators)):
            if temp is None:
                preds = torch.argmax(logits[b], dim=-1)
            else:
                probs = torch.softmax(logits[b].float().cpu() / temp, dim=-1)
                preds = torch.multinomial(probs, 1, generator=gen)[:, 0].to(windows.device)
            windows[b, fill_from:, cb] = preds


def generate_fine(
    models: BarkModels, coarse: np.ndarray, voice, params: SamplingParams, generator: torch.Generator
) -> np.ndarray:
    """Fine codes int64 [8, T] (Bark's `generate_fine`: 1024-frame windows, hop 512)."""
    n_given, n_frames = coarse.shape
    hist = fine_history(_voice_arrays(voice)[2])  # [8, H]
    pad_rows = np.full((N_FINE_CODEBOOKS - n_given, n_frames), FINE_PAD_TOKEN, dtype=np.int64)
    arr = np.concatenate([hist, np.concatenate([coarse, pad_rows])], axis=1)  # [8, H + T]
    n_hist = hist.shape[1]
    n_pad = max(0, FINE_WINDOW - arr.shape[1])
    arr = np.pad(arr, ((0, 0), (0, n_pad)), constant_values=FINE_PAD_TOKEN)
    n_loops = max(0, math.ceil((n_frames - (FINE_WINDOW - n_hist)) / FINE_HOP)) + 1
    buf = _tensor(arr.T, models).contiguous()  # [H + T + pad, 8]
    total = buf.shape[0]
    for n in range(n_loops):
        start = min(n * FINE_HOP, total - FINE_WINDOW)
        fill = min(n_hist + n * FINE_HOP, total - FINE_HOP)
        window = buf[start:start + FINE_WINDOW]  # a view: writes land in buf
        fine_predict(models.fine, window[None], fill - start, n_given, [params.fine_temperature], [generator])
    out = buf.cpu().numpy().T[:, n_hist:]
    if n_pad:
        out = out[:, :-n_pad]
    assert out.shape == (N_FINE_CODEBOOKS, n_frames)
    return out


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
        seed = None if params.seed is None else params.seed + i
        seg_params = dataclasses.replace(params, seed=seed)
        history = voice if (voice is not None or i == 0) else _FirstSegmentVoice(results[0])
        res = generate_audio(models, codec, tokenizer, piece, history, seg_params, allow_short=True)
        results.append(res)
        ov = min(overlap, len(audio), len(res.audio)) if i else 0
        audio = crossfade_join(audio, res.audio, ov)
    return LongResult(results, texts, audio)
