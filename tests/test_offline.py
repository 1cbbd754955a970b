"""Offline generation: caller mistakes give their specific errors; seeds, caps and greedy behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_fixtures import VOCAB, tiny_models, write_suno_tiny
from streaming.codec import load_codec
from streaming.errors import ConfigError, TextError, VoiceError, WeightsError
from streaming.offline import generate_audio, generate_coarse, generate_fine, generate_semantic
from streaming.params import SamplingParams
from streaming.sampling import make_generator
from streaming.tokenizer import BarkTokenizer
from streaming.voices import bundled_voices_dir, load_voice
from streaming.weights import load_models

TEXT = "hello world, good morning."


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def codec():
    return load_codec("random", seed=0)


@pytest.fixture(scope="module")
def tokenizer() -> BarkTokenizer:
    return BarkTokenizer.from_vocab_file(VOCAB)


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_empty_text(models, codec, tokenizer, text: str) -> None:
    """Empty or whitespace-only text raises TextError 'text: is empty' before any model runs."""
    with pytest.raises(TextError, match="text: is empty"):
        generate_audio(models, codec, tokenizer, text, None, SamplingParams(greedy=True, max_semantic_tokens=4))


def test_unknown_voice_lists_valid_names() -> None:
    """An unknown preset raises VoiceError naming it and listing the valid preset names."""
    with pytest.raises(VoiceError) as err:
        load_voice("v2/en_speaker_99", voices_dir=bundled_voices_dir())
    msg = str(err.value)
    for needle in ("'v2/en_speaker_99'", "Valid presets", "v2/{lang}_speaker_{0..9}", "announcer", " en,", " zh"):
        assert needle in msg, (needle, msg)


def test_voice_typo_suggests_close_name() -> None:
    """A misspelt preset raises VoiceError suggesting the close standard name."""
    with pytest.raises(VoiceError, match=r"did you mean 'v2/en_speaker_6'"):
        load_voice("v2/en_speker_6", voices_dir=bundled_voices_dir())


def test_broken_npz(tmp_path: Path) -> None:
    """A voice .npz that is not a zip archive raises VoiceError naming the file."""
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(VoiceError, match=r"voice file .*broken\.npz: not a readable \.npz archive"):
        load_voice(str(bad))


def test_truncated_npz(tmp_path: Path) -> None:
    """A truncated copy of a real preset raises VoiceError naming the file."""
    good = bundled_voices_dir() / "v2" / "en_speaker_6.npz"
    bad = tmp_path / "cut.npz"
    bad.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(VoiceError, match=r"voice file .*cut\.npz"):
        load_voice(str(bad))


def test_npz_missing_key(tmp_path: Path) -> None:
    """An .npz without fine_prompt raises VoiceError naming the missing key."""
    path = tmp_path / "partial.npz"
    np.savez(path, semantic_prompt=np.zeros(10, dtype=np.int64), coarse_prompt=np.zeros((2, 15), dtype=np.int64))
    with pytest.raises(VoiceError, match="missing key fine_prompt"):
        load_voice(str(path))


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    """A Suno directory without coarse.pt raises WeightsError naming the missing file."""
    write_suno_tiny(tmp_path)
    (tmp_path / "coarse.pt").unlink()
    with pytest.raises(WeightsError, match=r"missing .*coarse\.pt"):
        load_models(str(tmp_path), device="cpu", dtype="fp32")


def test_wrong_model_name() -> None:
    """An unknown model name raises ConfigError listing bark-small and random-tiny among the choices."""
    with pytest.raises(ConfigError, match=r"model: 'bark-smal' .*bark-small.*random-tiny"):
        load_models("bark-smal", device="cpu", dtype="fp32")


@pytest.mark.parametrize("field, value, pattern", [
    ("text_temp", 0.0, r"text_temp: 0\.0 is outside"),
    ("coarse_temp", None, "coarse_temp: a number is required"),
    ("fine_temp", "hot", "fine_temp: expected a number, got str"),
    ("top_k", 0, r"top_k: 0 is outside \[1, 12096\]"),
    ("top_k", 2.5, "top_k: expected an integer, got float"),
    ("top_p", 1.5, r"top_p: 1\.5 is outside"),
    ("min_eos_p", -0.1, r"min_eos_p: -0\.1 is outside \(0\.0, 1\.0\]"),
    ("min_eos_p", 0.0, r"min_eos_p: 0\.0 is outside \(0\.0, 1\.0\]"),  # 0 would stop before any token
    ("seed", -1, "seed: -1 is outside"),
    ("max_semantic_tokens", 769, r"max_semantic_tokens: 769 is outside \[1, 768\]"),
    ("max_semantic_tokens", True, "max_semantic_tokens: expected an integer, got bool"),
    ("greedy", "yes", "greedy: expected true or false, got str"),
])
def test_sampling_params_errors_name_the_field(field: str, value, pattern: str) -> None:
    """Each invalid SamplingParams field raises ConfigError whose message starts with the field name."""
    with pytest.raises(ConfigError, match=pattern):
        SamplingParams(**{field: value})


def test_greedy_params() -> None:
    """greedy=True means top_k 1 for semantic/coarse and argmax (None) for fine, whatever else is set."""
    p = SamplingParams(greedy=True, top_k=50, fine_temp=0.5)
    assert p.semantic_top_k == 1 and p.fine_temperature is None
    q = SamplingParams(top_k=50, fine_temp=0.5)
    assert q.semantic_top_k == 50 and q.fine_temperature == 0.5


# ----------------------------------------------------------- seeds and caps
def test_seeded_sampling_reproducible(models, codec, tokenizer) -> None:
    """Non-greedy generate_audio with the same seed gives identical tokens and audio; its semantic stage is seeded."""
    params = SamplingParams(seed=3, max_semantic_tokens=8, text_temp=1.0)
    a, b = (generate_audio(models, codec, tokenizer, TEXT, None, params) for _ in range(2))
    for stage in ("semantic", "coarse", "fine", "audio"):
        assert np.array_equal(getattr(a, stage), getattr(b, stage)), stage
    assert len(a.semantic) == 8 and a.coarse.shape == (2, 12) and a.fine.shape == (8, 12)
    ids = tokenizer.encode(TEXT)
    same = generate_semantic(models, ids, None, params, make_generator(3))
    other = generate_semantic(models, ids, None, params, make_generator(4))
    assert np.array_equal(a.semantic, same) and not np.array_equal(same, other)


def test_seeded_coarse_and_fine_reproducible(models) -> None:
    """generate_coarse / generate_fine sampling: same generator seed -> identical codes, other seed -> different."""
    semantic = np.random.default_rng(0).integers(0, 10_000, 8)
    params = SamplingParams(coarse_temp=1.0, fine_temp=1.0)
    coarse = [generate_coarse(models, semantic, None, params, make_generator(s)) for s in (5, 5, 6)]
    assert np.array_equal(coarse[0], coarse[1]) and not np.array_equal(coarse[0], coarse[2])
    fine = [generate_fine(models, coarse[0], None, params, make_generator(s)) for s in (5, 5, 6)]
    assert np.array_equal(fine[0], fine[1]) and not np.array_equal(fine[0][2:], fine[2][2:])
    assert np.array_equal(fine[0][:2], coarse[0])  # the given codebooks are kept as they are


@pytest.mark.parametrize("cap", [1, 7, 20])
def test_max_semantic_tokens_caps_length(models, tokenizer, cap: int) -> None:
    """max_semantic_tokens=N yields exactly N semantic tokens (random weights do not stop earlier), greedy or not."""
    ids = tokenizer.encode(TEXT)
    for params in (SamplingParams(greedy=True, max_semantic_tokens=cap),
                   SamplingParams(seed=1, max_semantic_tokens=cap)):
        out = generate_semantic(models, ids, None, params, make_generator(params.seed or 0))
        assert out.dtype == np.int64 and len(out) == cap
        assert out.min() >= 0 and out.max() < 10_000


def test_greedy_semantic_is_a_prefix_of_a_longer_run(models, tokenizer) -> None:
    """A greedy run capped at 8 equals the first 8 tokens of the same run capped at 24 (np.array_equal)."""
    ids, voice = tokenizer.encode(TEXT), load_voice("announcer", voices_dir=bundled_voices_dir())
    short = generate_semantic(models, ids, voice, SamplingParams(greedy=True, max_semantic_tokens=8), make_generator(0))
    long = generate_semantic(models, ids, voice, SamplingParams(greedy=True, max_semantic_tokens=24), make_generator(0))
    assert np.array_equal(short, long[:8])
