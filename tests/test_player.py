"""Tests for client.player (jitter buffer, real PortAudio/ALSA path) and client.wav."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import player as player_mod
from client.player import JitterBuffer, PlaybackUnavailable, Player, PlayerConfig, as_mono_float32
from client.wav import WavWriter, float_to_pcm16, read_wav, write_wav

ROOT = Path(__file__).resolve().parents[1]
ALSA_DIR = Path(__file__).resolve().parent / "alsa"
HAVE_PORTAUDIO = ctypes.util.find_library("portaudio") is not None
needs_portaudio = pytest.mark.skipif(
    not HAVE_PORTAUDIO, reason="libportaudio2 is not installed (Debian/Ubuntu: apt-get install libportaudio2)"
)


def _signal(n: int, seed: int = 0) -> np.ndarray:
    """float32 [n] with |x| in [0.02, 0.9]: no sample quantises to 0, so silence is distinguishable."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.02, 0.9, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)


def _pull(buf: JitterBuffer, frames: int) -> tuple[np.ndarray, bool]:
    out = np.full(frames, np.nan, dtype=np.float32)
    ended = buf.fill(out)
    return out, ended


# --- jitter buffer (no device) ---------------------------------------------------


def test_silent_until_prebuffer_then_plays_in_order() -> None:
    """Output is silence until `prebuffer` samples are queued, then the audio in order."""
    buf = JitterBuffer(100)
    x = _signal(150)
    buf.push(x[:60])
    out, _ = _pull(buf, 40)
    assert not out.any()
    buf.push(x[60:])
    out1, _ = _pull(buf, 80)
    out2, _ = _pull(buf, 70)
    np.testing.assert_array_equal(np.concatenate([out1, out2]), x)
    s = buf.stats(24_000)
    assert (s.underruns, s.played_samples) == (0, 150)


def test_finish_starts_playback_below_prebuffer_and_ends() -> None:
    """finish() plays a short tail without waiting for the prebuffer, pads with silence and ends."""
    buf = JitterBuffer(1000)
    x = _signal(30)
    buf.push(x)
    assert not _pull(buf, 50)[0].any()
    buf.finish()
    out, ended = _pull(buf, 50)
    np.testing.assert_array_equal(out[:30], x)
    assert not out[30:].any() and ended and buf.ended
    assert buf.stats(24_000).underruns == 0


def test_finish_with_no_audio_ends_at_once() -> None:
    """A stream finished without any audio ends on the first callback."""
    buf = JitterBuffer(10)
    buf.finish()
    out, ended = _pull(buf, 8)
    assert ended and not out.any()


def test_underrun_counted_once_per_dry_episode_and_reprebuffers() -> None:
    """Running dry counts one underrun with its silence, and playback resumes only after re-prebuffering."""
    buf = JitterBuffer(50, clock=lambda: 7.0)
    x = _signal(200)
    buf.push(x[:60])
    first, _ = _pull(buf, 100)  # 60 audio + 40 silence: dry
    assert buf.wait_dry(timeout=0)
    assert not _pull(buf, 100)[0].any()  # still dry: silence, same episode
    buf.push(x[60:90])  # 30 < prebuffer 50: still silent
    assert not _pull(buf, 20)[0].any()
    buf.push(x[90:])
    rest, _ = _pull(buf, 110)
    assert not buf.wait_dry(timeout=0)  # playing again
    np.testing.assert_array_equal(first[:60], x[:60])
    np.testing.assert_array_equal(rest, x[60:170])
    s = buf.stats(1000)
    assert s.underruns == 1
    assert s.underrun_ms == 40 + 100 + 20  # at 1 kHz, one sample = 1 ms
    assert s.played_samples == 170 and s.first_play_time == 7.0


def test_two_dry_episodes_count_two_underruns() -> None:
    """Each separate dry episode is one underrun."""
    buf = JitterBuffer(1)
    for k in range(2):
        buf.push(_signal(5, seed=k))
        _pull(buf, 8)
        _pull(buf, 8)
    assert buf.stats(24_000).underruns == 2


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    reads=st.lists(st.integers(1, 257), min_size=1, max_size=8),
    prebuffer=st.integers(0, 400),
)
def test_chunked_writes_and_reads_deliver_every_sample_once(writes: list[int], reads: list[int], prebuffer: int) -> None:
    """Whatever the write and callback sizes, the non-silent output is exactly the input, in order."""
    x = _signal(sum(writes))
    buf = JitterBuffer(prebuffer)
    played, pos, i = [], 0, 0
    for w in writes:
        buf.push(x[pos : pos + w])
        pos += w
        played.append(_pull(buf, reads[i % len(reads)])[0])
        i += 1
    buf.finish()
    ended = False
    while not ended:
        out, ended = _pull(buf, reads[i % len(reads)])
        played.append(out)
        i += 1
    got = np.concatenate(played)
    np.testing.assert_array_equal(got[got != 0], x)
    assert buf.stats(24_000).played_samples == x.size


def test_write_after_finish_raises() -> None:
    """Writing after finish() is a caller mistake."""
    buf = JitterBuffer(10)
    buf.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        buf.push(_signal(3))


def test_as_mono_float32_checks_shape_and_dtype() -> None:
    """Mono [n] and [n, 1] float input is accepted; stereo and integer PCM are refused."""
    assert as_mono_float32(np.zeros((4, 1), np.float64)).shape == (4,)
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        as_mono_float32(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="int16"):
        as_mono_float32(np.zeros(4, np.int16))


@pytest.mark.parametrize(
    "kwargs, field",
    [({"prebuffer_ms": -1}, "prebuffer_ms"), ({"sample_rate": 0}, "sample_rate"),
     ({"blocksize": -5}, "blocksize"), ({"latency": "fast"}, "latency")],
)
def test_player_config_rejects_bad_values(kwargs: dict, field: str) -> None:
    """A bad PlayerConfig value raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        PlayerConfig(**kwargs)


def test_missing_portaudio_is_playback_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libportaudio, start() raises PlaybackUnavailable naming the package and --no-play."""
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    with pytest.raises(PlaybackUnavailable, match=r"libportaudio2.*--no-play --output"):
        Player().start()


def test_prebuffer_samples_from_ms() -> None:
    """prebuffer_ms converts to samples at the configured rate."""
    assert PlayerConfig(prebuffer_ms=150).prebuffer_samples == 3600
    assert player_mod.PlayerConfig(sample_rate=16_000, prebuffer_ms=10).prebuffer_samples == 160


# --- the real sounddevice -> PortAudio -> ALSA path ----------------------------------


def _play_through_alsa(tmp_path: Path, x: np.ndarray, *, config: str = "asound.conf", prebuffer_ms: float = 150,
                       split: int | None = None) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """Run tests/alsa/play.py with ALSA's default PCM recording into tmp_path/device.raw."""
    np.save(tmp_path / "in.npy", x)
    raw, stats = tmp_path / "device.raw", tmp_path / "stats.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALSA_", "JACK_"))}
    env.update(
        ALSA_CONFIG_PATH=str(ALSA_DIR / config),  # replaces alsa.conf and ~/.asoundrc entirely
        BARK_ALSA_OUT=str(raw),  # read by tests/alsa/asound.conf
        JACK_NO_START_SERVER="1",  # PortAudio's JACK backend must not spawn a server
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    cmd = [sys.executable, str(ALSA_DIR / "play.py"), str(tmp_path / "in.npy"), str(stats), str(prebuffer_ms)]
    if split is not None:
        cmd.append(str(split))
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return proc, raw, stats


def _device_samples(raw: Path) -> np.ndarray:
    """The S16_LE samples the ALSA 'sound card' received, as float (ALSA's scale: 32768)."""
    return np.fromfile(raw, dtype="<i2").astype(np.float64) / 32768


@needs_portaudio
def test_alsa_device_receives_exactly_the_written_samples(tmp_path: Path) -> None:
    """Samples written to Player reach the ALSA device in order, complete, within one int16 step."""
    x = _signal(24_000 + 123)
    # The null device plays ~1000x faster than real time, so a prebuffer reached before
    # finish() could run dry first; one longer than the signal makes playback start at finish().
    proc, raw, stats_path = _play_through_alsa(tmp_path, x, prebuffer_ms=2000)
    assert proc.returncode == 0, proc.stderr
    got = _device_samples(raw)
    audio = got[got != 0]  # drop the silence around the signal
    assert audio.size == x.size, f"device got {audio.size} non-silent samples, wrote {x.size}"
    assert np.abs(audio - x).max() <= 1 / 32767
    stats = json.loads(stats_path.read_text())
    assert stats["underruns"] == 0 and stats["played_samples"] == x.size
    assert stats["first_play_time"] is not None


@needs_portaudio
def test_alsa_underrun_is_counted_once_and_audio_resumes(tmp_path: Path) -> None:
    """Writing half, letting the player run dry, then the rest: one underrun, and no sample lost."""
    x = _signal(16_000, seed=1)
    # prebuffer 9000 samples: the first 10000 start playing at once; the last 6000 wait
    # for finish(), so the fast null device cannot run dry a second time in between
    proc, raw, stats_path = _play_through_alsa(tmp_path, x, prebuffer_ms=375, split=10_000)
    assert proc.returncode == 0, proc.stderr
    got = _device_samples(raw)
    nz = np.flatnonzero(got)
    assert np.abs(got[nz] - x).max() <= 1 / 32767 and nz.size == x.size
    assert np.diff(nz).max() > 1  # the device really heard a gap
    stats = json.loads(stats_path.read_text())
    assert stats["underruns"] == 1 and stats["underrun_ms"] > 0
    assert stats["played_samples"] == x.size


@needs_portaudio
def test_no_output_device_is_playback_unavailable(tmp_path: Path) -> None:
    """With no ALSA output device, starting a Player fails with a one-line hint, not a crash."""
    proc, _, _ = _play_through_alsa(tmp_path, _signal(10), config="no_device.conf")
    assert proc.returncode == 3, proc.stderr
    msg = proc.stderr.strip()
    assert "no audio output device found" in msg and "--no-play --output" in msg and "\n" not in msg


# --- WAV ------------------------------------------------------------------------------


def test_wav_round_trip_within_half_a_step(tmp_path: Path) -> None:
    """A float signal written as 16-bit WAV reads back at 24 kHz within half an int16 step."""
    x = np.concatenate([_signal(5000), [1.0, -1.0, 0.0]]).astype(np.float32)
    write_wav(tmp_path / "a.wav", x)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 24_000 and y.dtype == np.float32 and y.size == x.size
    assert np.abs(y - x).max() <= 0.5 / 32767 + 1e-7


def test_wav_writer_streams_chunks_and_clips(tmp_path: Path) -> None:
    """Chunks appended to WavWriter equal the whole signal; out-of-range samples are clipped."""
    x = _signal(3000, seed=2)
    with WavWriter(tmp_path / "b.wav") as w:
        for part in np.array_split(x, 7):
            w.write(part)
        w.write(np.array([1.5, -2.0], np.float32))
    w.close()  # safe twice
    y, _ = read_wav(tmp_path / "b.wav")
    np.testing.assert_array_equal(float_to_pcm16(y), np.concatenate([float_to_pcm16(x), [32767, -32767]]))
    assert w.samples_written == x.size + 2
