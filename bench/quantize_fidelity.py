"""How far int8 weight-only layers move the text and coarse GPTs' next-token distributions from fp32.

    python bench/quantize_fidelity.py [--shape small] [--steps 120]

Teacher forcing over a fixed corpus: the fp32 model generates greedily from each
prompt (several texts for the semantic stage, random semantic windows for the
coarse stage); then the fp32 and the int8 model (fp32 activations, so only the
weights differ) read the same tokens, and at every step we compare their
distributions over the tokens that stage samples from: KL(fp32 || int8) in nats
(mean, p95, max) and how often their argmax agrees. Random weights spread
probability flatly, so these figures say little about real speech: re-measure
with the real checkpoints before turning int8 on.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torch.nn.functional as F

from common import ROOT, machine
from streaming.constants import CODEBOOK_SIZE, SEMANTIC_VOCAB_SIZE
from streaming.models.bundle import SHAPES, build_models
from streaming.models.quant import quantize_gpt
from streaming.prompts import COARSE_HEAD_ROWS, coarse_window_prompt, semantic_prompt
from streaming.tokenizer import BarkTokenizer

TEXTS = ["Hello there, this is a benchmark.", "The quick brown fox jumps over the lazy dog.",
         "Streaming speech should start at once and never stutter.", "Numbers like 42 and 1999 are read aloud."]


def teacher_forced(model, prompt: torch.Tensor, tokens: list[int], merge: bool, rows, columns: slice) -> torch.Tensor:
    """Log-probabilities [len(tokens) + 1, V'] over `columns` after the prompt and after each fed token."""
    cache = model.new_cache(1)
    logits = [model.prefill(prompt[None], cache, [0], merge_context=merge, rows=rows)[0]]
    for t in tokens:
        logits.append(model.decode(torch.tensor([t]), cache, [0], rows=rows)[0])
    return F.log_softmax(torch.stack(logits).float()[:, columns], dim=-1)


def greedy(model, prompt: torch.Tensor, steps: int, merge: bool, rows, columns: slice, offset: int) -> list[int]:
    cache = model.new_cache(1)
    logits = model.prefill(prompt[None], cache, [0], merge_context=merge, rows=rows)[0]
    out = []
    for _ in range(steps):
        token = int(logits.float()[columns].argmax()) + offset
        out.append(token)
        logits = model.decode(torch.tensor([token]), cache, [0], rows=rows)[0]
    return out


def compare(name: str, fp32, int8, cases, merge: bool, rows, columns: slice, offset: int, steps: int) -> None:
    kls, agree = [], []
    for prompt in cases:
        tokens = greedy(fp32, prompt, steps, merge, rows, columns, offset)
        a = teacher_forced(fp32, prompt, tokens, merge, rows, columns)
        b = teacher_forced(int8, prompt, tokens, merge, rows, columns)
        kls.append((a.exp() * (a - b)).sum(-1))
        agree.append(a.argmax(-1) == b.argmax(-1))
    kl, same = torch.cat(kls).numpy(), torch.cat(agree).float().numpy()
    print(f"{name:8s} {len(kl):5d} steps: KL(fp32||int8) mean {kl.mean():.2e} p95 {np.percentile(kl, 95):.2e} "
          f"max {kl.max():.2e} nats; greedy agreement {same.mean():.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="small", choices=("tiny", "small", "large"))
    ap.add_argument("--steps", type=int, default=120)
    a = ap.parse_args()
    print(machine())
    models = build_models(SHAPES[a.shape], f"random-{a.shape}", seed=0)
    tok = BarkTokenizer.from_vocab_file(ROOT / "tests" / "data" / "tokenizer" / "vocab.txt")
    print(f"random-{a.shape}, fp32 activations, {a.steps} teacher-forced steps per case")
    with torch.inference_mode():
        text_cases = [torch.as_tensor(semantic_prompt(tok.encode(t), None)) for t in TEXTS]
        compare("semantic", models.text, quantize_gpt(copy.deepcopy(models.text)), text_cases, True, None,
                slice(0, SEMANTIC_VOCAB_SIZE + 1), 0, a.steps)
        rng = np.random.default_rng(0)
        coarse_cases = [torch.as_tensor(coarse_window_prompt(rng.integers(0, SEMANTIC_VOCAB_SIZE, 256),
                                                             np.zeros(0, dtype=np.int64))) for _ in range(4)]
        # codebook 0's 1,024 logits (even steps); the teacher-forced sequence alternates, which is fine for KL
        compare("coarse", models.coarse, quantize_gpt(copy.deepcopy(models.coarse)), coarse_cases, False,
                COARSE_HEAD_ROWS, slice(0, CODEBOOK_SIZE), SEMANTIC_VOCAB_SIZE, min(a.steps, 60))


if __name__ == "__main__":
    main()
