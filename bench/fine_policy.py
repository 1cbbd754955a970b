"""How the sliding fine policy's knobs trade first-audio latency against agreement with offline fine codes.

    python bench/fine_policy.py [--shape small] [--tokens 150]

For each (fine_window, fine_right_context) the same greedy request (voice
v2/en_speaker_6) is streamed; we report how many coarse frames must exist before
the first fine window can run (what sets time to first audio) and the share of codebook 2-7 codes equal to Bark's offline fine pass over
the same coarse codes. Random weights spread attention evenly, so agreement is
low for every setting; with trained weights, rerun this to choose.

Then the cost of the default sliding windows per audio second, for a stream that is
behind the wall clock (growing windows: 8, 16, 32, 64, 120 new frames...) and for
one far enough ahead to wait for full windows (`relaxed`), against Bark's own
offline fine pass over the same coarse codes; each with its agreement with the
offline codes. The windows are driven directly on the fine stage, coarse frames
arriving 4 at a time, so the schedule (not the machine's pace) decides the sizes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import in_own_thread, machine
from offline_vs_suno import VOCAB
from streaming import offline
from streaming.codec import load_codec
from streaming.engine import Engine, EngineConfig
from streaming.events import StreamDone
from streaming.params import SamplingParams, StreamPolicy
from streaming.prompts import flatten_coarse
from streaming.sampling import make_generator
from streaming.segment import CoarseState, Segment
from streaming.stages.fine import FIRST_NEW, FineStage
from streaming.stream import SpeechRequest
from streaming.tokenizer import BarkTokenizer
from streaming.voices import bundled_voices_dir, load_voice
from streaming.threads import serial_main_thread
from streaming.weights import load_models

SETTINGS = [(128, 8), (256, 16), (256, 32), (256, 48), (512, 64), (1024, 128)]
PACES = {"behind (growing windows)": (-2.0, 0.3), "ahead (relaxed: full windows)": (30.0, 4.0)}


def drive_sliding(models, coarse: np.ndarray, voice, params, pace) -> tuple[np.ndarray, int, int, float]:
    """Sliding windows over `coarse` [2, F] as they arrive 4 frames a tick -> (fine, windows, positions, s)."""
    stage, policy = FineStage(models), StreamPolicy()
    seg = Segment(0, "", [], voice, make_generator(0))
    flat = flatten_coarse(coarse).tolist()
    seg.co = CoarseState(sem_hist=np.zeros(0, np.int64), coarse_hist=np.zeros(0, np.int64))
    seg.pace = pace
    windows = positions = 0
    spent = 0.0
    for end in range(8, len(flat) + 8, 8):
        seg.coarse = flat[:end]
        seg.co.done = end >= len(flat)
        while (w := stage.work(seg, policy)) is not None and w.action == "window":
            t0 = time.perf_counter()
            stage.run("window", [seg], [params], [w])
            spent += time.perf_counter() - t0
            windows += 1
            positions += w.detail.length
    return seg.fine, windows, positions, spent


def fine_cost(models, voice, params, coarse: np.ndarray) -> None:
    audio_s = coarse.shape[1] / 75
    t0 = time.perf_counter()
    ref = in_own_thread(offline.generate_fine, models, coarse, voice, params, torch.Generator())
    off_s = time.perf_counter() - t0
    print(f"fine cost for {audio_s:.1f} s of audio ({coarse.shape[1]} frames):")
    print(f"  offline (Bark's windows): {off_s:.2f} s = {off_s / audio_s:.2f} s per audio s")
    for name, pace in PACES.items():
        fine, n, pos, spent = in_own_thread(drive_sliding, models, coarse, voice, params, pace)
        agree = float((ref[2:] == fine[2:]).mean())
        print(f"  sliding, {name}: {n} windows, {pos} positions, {spent:.2f} s = {spent / audio_s:.2f} s per "
              f"audio s ({spent / off_s:.2f}x offline), agreement with offline {agree:.1%}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=("tiny", "small", "large"))
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--tokens", type=int, default=150, help="semantic tokens (greedy)")
    ap.add_argument("--cost-only", action="store_true",
                    help="skip the settings table: one greedy stream, then the fine cost per audio second")
    a = ap.parse_args()
    serial_main_thread()  # the engine thread computes; see streaming/threads.py
    print(f"machine: {machine()}")
    models = load_models(f"random-{a.shape}", device="cpu", dtype=a.dtype)
    engine = Engine(models, load_codec("random"), BarkTokenizer.from_vocab_file(VOCAB), EngineConfig(max_streams=1))
    engine.start()
    voice = load_voice("v2/en_speaker_6", voices_dir=bundled_voices_dir())
    params = SamplingParams(greedy=True, max_semantic_tokens=a.tokens)
    text = "Hello there, this is a benchmark of the fine policy."
    reference = None
    print(f"random-{a.shape} {a.dtype}, {a.tokens} semantic tokens, greedy")
    print("window right | coarse frames before first fine window | agreement (codebooks 2-7)")
    for window, right in SETTINGS[1:2] if a.cost_only else SETTINGS:
        policy = StreamPolicy(fine_window=window, fine_right_context=right)
        req = SpeechRequest(text=text, voice=voice, sampling=params, policy=policy, return_tokens=True)
        done = [e for e in engine.submit(req).events(timeout=3600) if isinstance(e, StreamDone)][0]
        seg = done.tokens[0]
        if reference is None:
            reference = in_own_thread(offline.generate_fine, models, seg.coarse, voice, params, torch.Generator())
        agree = float((reference[2:] == seg.fine[2:]).mean())
        print(f"{window:6d} {right:5d} | {FIRST_NEW + right:38d} | {agree:6.1%}")
    engine.stop()
    fine_cost(models, voice, params, seg.coarse)


if __name__ == "__main__":
    main()
