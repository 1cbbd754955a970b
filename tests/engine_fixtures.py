"""A started engine on random-tiny weights (fp32, random codec, made-up vocab) for streaming tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streaming.codec import load_codec
from streaming.engine import Engine, EngineConfig
from streaming.events import AudioChunk, SegmentSpan, StreamDone
from streaming.stream import SpeechRequest
from streaming.tokenizer import BarkTokenizer
from streaming.voices import bundled_voices_dir, load_voice
from streaming.weights import load_models

VOCAB = Path(__file__).parent / "data" / "tokenizer" / "vocab.txt"


def tiny_parts():
    """(models, codec, tokenizer): seeded random-tiny fp32 on cpu."""
    torch.manual_seed(0)
    models = load_models("random-tiny", device="cpu", dtype="fp32")
    return models, load_codec("random"), BarkTokenizer.from_vocab_file(VOCAB)


def make_engine(parts, **config) -> Engine:
    models, codec, tok = parts
    engine = Engine(models, codec, tok, EngineConfig(**config))
    engine.start()
    return engine


def voice(name: str = "v2/en_speaker_6"):
    return load_voice(name, voices_dir=bundled_voices_dir())


def run(engine: Engine, request: SpeechRequest, timeout: float = 120):
    """Submit and collect: (audio float32 [n], chunks, spans, done)."""
    chunks, spans, done = [], [], None
    for event in engine.submit(request).events(timeout=timeout):
        if isinstance(event, AudioChunk):
            chunks.append(event)
        elif isinstance(event, SegmentSpan):
            spans.append(event)
        elif isinstance(event, StreamDone):
            done = event
    audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    return audio, chunks, spans, done


def collect_events(handle, timeout: float = 120) -> list:
    """Every remaining event of a handle, StreamDone last."""
    return list(handle.events(timeout=timeout))
