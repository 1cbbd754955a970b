"""`python -m streaming`: generate speech from the command line, offline or streamed.

    python -m streaming --model random-tiny --tokenizer tests/data/tokenizer --codec random \
        --text "Hello there." --greedy --max-semantic-tokens 60 --out out/hello
    python -m streaming --mode stream ...   # the same through the streaming engine

Writes OUT.wav and OUT.npz (semantic [N], coarse [2, T], fine [8, T], audio float32 24 kHz,
segment_texts, segment_frames). Streamed and offline results of the same request can be
compared file to file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .errors import BarkStreamError
from .params import FINE_POLICIES, LOOKAHEAD_POLICIES, SamplingParams, StreamPolicy

logger = logging.getLogger("streaming")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m streaming", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, help="text to speak ('-' reads stdin)")
    p.add_argument("--out", required=True, type=Path, help="output path without extension")
    p.add_argument("--mode", choices=("offline", "stream"), default="offline")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="bark-small",
                   help="bark-small, bark, hf:suno/bark-small, hf:suno/bark, a local directory, random-tiny|small|large")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16 (GPU) (also float32, bfloat16, float16)")
    g.add_argument("--codec", default="pretrained", help="pretrained, random, or an EnCodec state-dict file")
    g.add_argument("--tokenizer", default=None, help="directory with vocab.txt, or a hub repo")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: weight-only int8 text and coarse GPTs (CPU only; measure fidelity first)")
    g.add_argument("--offline", "--local-files-only", dest="local_files_only", action="store_true",
                   help="never touch the network: weights, tokenizer and voices from local files or the cache")
    g = p.add_argument_group("voice")
    g.add_argument("--voice", default=None, help="preset name (v2/en_speaker_6, announcer, ...) or .npz path")
    g.add_argument("--voices", type=Path, default=None, help="directory holding preset .npz files")
    g = p.add_argument_group("sampling")
    g.add_argument("--text-temp", type=float, default=0.7)
    g.add_argument("--waveform-temp", type=float, default=0.7, help="coarse temperature")
    g.add_argument("--fine-temp", type=float, default=0.5)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--min-eos-p", type=float, default=0.2)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--greedy", action="store_true", help="argmax everywhere (what the equivalence tests use)")
    g.add_argument("--max-semantic-tokens", type=int, default=None)
    g = p.add_argument_group("streaming policies (--mode stream)")
    g.add_argument("--lookahead", choices=LOOKAHEAD_POLICIES, default="exact")
    g.add_argument("--max-lookahead", type=int, default=StreamPolicy.max_lookahead)
    g.add_argument("--fine-policy", choices=FINE_POLICIES, default="sliding")
    g.add_argument("--fine-window", type=int, default=StreamPolicy.fine_window)
    g.add_argument("--fine-right-context", type=int, default=StreamPolicy.fine_right_context)
    p.add_argument("--log-level", default="WARNING")
    return p


def _params(a: argparse.Namespace) -> tuple[SamplingParams, StreamPolicy]:
    sampling = SamplingParams(text_temp=a.text_temp, coarse_temp=a.waveform_temp, fine_temp=a.fine_temp,
                              top_k=a.top_k, top_p=a.top_p, min_eos_p=a.min_eos_p, seed=a.seed,
                              max_semantic_tokens=a.max_semantic_tokens, greedy=a.greedy)
    policy = StreamPolicy(lookahead=a.lookahead, max_lookahead=a.max_lookahead, fine=a.fine_policy,
                          fine_window=a.fine_window, fine_right_context=a.fine_right_context)
    return sampling, policy


def _run_stream(engine, text, voice, sampling, policy):
    from .events import AudioChunk, StreamDone
    from .stream import SpeechRequest

    import numpy as np

    req = SpeechRequest(text=text, voice=voice, sampling=sampling, policy=policy, return_tokens=True)
    chunks, done = [], None
    for event in engine.submit(req).events():
        if isinstance(event, AudioChunk):
            chunks.append(event.samples)
        elif isinstance(event, StreamDone):
            done = event
    if done.reason != "end":
        raise BarkStreamError(f"stream ended with {done.reason}: {done.error}")
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return done.tokens, audio, done.stats.as_dict()


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    text = sys.stdin.read() if a.text == "-" else a.text
    try:
        from .bundle import load_engine
        from .offline import generate_long
        from .voices import load_voice
        from .wavio import write_result_npz, write_wav

        sampling, policy = _params(a)
        if a.mode == "stream":
            from .threads import serial_main_thread

            serial_main_thread()  # compute belongs to the engine thread
        engine = load_engine(a.model, device=a.device, dtype=a.dtype, codec=a.codec, tokenizer=a.tokenizer,
                             voices_dir=a.voices, local_files_only=a.local_files_only, threads=a.threads,
                             quantize=a.quantize)
        voice = load_voice(a.voice, voices_dir=a.voices, local_files_only=a.local_files_only)
        t0 = time.perf_counter()
        if a.mode == "offline":
            res = generate_long(engine.models, engine.codec, engine.tokenizer, text, voice, sampling)
            from .events import SegmentTokens

            segments = [SegmentTokens(t, r.semantic, r.coarse, r.fine) for t, r in zip(res.texts, res.segments)]
            audio, stats = res.audio, {}
        else:
            engine.start()
            t0 = time.perf_counter()
            segments, audio, stats = _run_stream(engine, text, voice, sampling, policy)
            engine.stop()
        elapsed = time.perf_counter() - t0
    except BarkStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_wav(a.out.with_suffix(".wav"), audio)
    write_result_npz(a.out.with_suffix(".npz"), segments, audio)
    seconds = len(audio) / 24_000
    print(f"{a.mode}: {seconds:.2f} s of audio in {elapsed:.2f} s ({len(segments)} segment(s)) "
          f"-> {a.out.with_suffix('.wav')}, {a.out.with_suffix('.npz')}")
    if stats:
        print(f"time to first audio {stats['ttfa_ms']} ms, stage ms {stats['stage_ms']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
