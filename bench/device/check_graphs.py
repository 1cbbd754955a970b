"""On a GPU: greedy steps replayed from CUDA graphs equal the eager dynamic steps (tokens identical).

    python bench/device/check_graphs.py        # prints one line per model; exits 1 on a mismatch
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streaming.models.bundle import SHAPES, build_models  # noqa: E402
from streaming.models.static_step import StaticDecoder  # noqa: E402
from streaming.prompts import COARSE_HEAD_ROWS  # noqa: E402


def main() -> int:
    models = build_models(SHAPES["small"], "random-small", seed=0).to("cuda", torch.bfloat16)
    bad = 0
    for name, rows, vocab in (("text", None, 10_048), ("coarse", COARSE_HEAD_ROWS, 12_096)):
        model = getattr(models, name)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, vocab, (n,), generator=g).cuda() for n in (5, 200, 400)]
        dyn, st = model.new_cache(4), model.new_cache(5)
        static = StaticDecoder(model, st, st.allocate(), rows, graphs=True)
        static.capture()
        ds = [dyn.allocate() for _ in prompts]
        ss = [st.allocate() for _ in prompts]
        a = torch.cat([model.prefill(p[None], dyn, [s], rows=rows) for p, s in zip(prompts, ds)]).argmax(-1)
        b = torch.cat([model.prefill(p[None], st, [s], rows=rows) for p, s in zip(prompts, ss)]).argmax(-1)
        same, diff = 0, 0.0
        for _ in range(60):
            la = model.decode(a, dyn, ds, rows=rows)
            lb = static(b.tolist(), ss)
            same += int(torch.equal(la.argmax(-1), lb.argmax(-1)))
            diff = max(diff, (la.float() - lb.float()).abs().max().item())
            a, b = la.argmax(-1), lb.argmax(-1)
        print(f"{name}: graphs replayed {static.replays} steps; tokens equal in {same}/60 steps; max logit diff {diff:.3g}")
        bad += same != 60
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
