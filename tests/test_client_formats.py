"""The client with the new formats against a real server: --encoding and --sample-rate, WAV for PCM and the
container for compressed encodings, --output written when playback is impossible, and the progress line."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr

from client.__main__ import Progress, RunReport, main, parse_args
from client.api import AudioChunk, BarkStreamClient, collect, collect_bytes
from client.wav import read_wav
from protocol.g711 import mulaw_decode, mulaw_encode
from protocol.pcm import float_to_s16
from streaming.engine import Engine
from tests.server_fixtures import PARAMS, ServerThread, engine, engine_audio, run, server  # noqa: F401
from tests.test_client_cli import ALSA_DIR, ROOT, needs_portaudio
from tests.test_formats import decode_file

TEXT = "Hello there. How are you?"
FLAGS = ["--greedy", "--max-semantic-tokens", str(PARAMS["max_semantic_tokens"])]


@pytest.fixture(scope="module")
def reference(engine: Engine) -> np.ndarray:
    return run(engine_audio(engine, TEXT))


def _cli(argv: list[str]) -> int:
    async def go() -> int:
        return await asyncio.to_thread(main, argv)  # main() runs its own event loop
    return run(go())


def test_api_sample_rate_and_compressed_bytes(server: ServerThread, reference: np.ndarray) -> None:
    """speak(sample_rate=...) gets PCM at that rate; an ogg_opus request's AudioChunk.data joins into a
    file; rates the encoding does not take are refused before sending."""
    async def go() -> tuple[np.ndarray, bytes, int]:
        async with await BarkStreamClient.connect(server.url) as client:
            assert client.info.rates("ogg_opus") == (8000, 16000, 24000, 48000)
            with pytest.raises(ValueError, match="sample_rate: ogg_opus takes 8000, 16000, 24000, 48000"):
                await collect(client.speak(TEXT, encoding="ogg_opus", sample_rate=44100))
            audio, _ = await collect(client.speak(TEXT, params=PARAMS, sample_rate=16000, encoding="pcm_f32le"))
            data, done = await collect_bytes(client.speak(TEXT, params=PARAMS, sample_rate=48000,
                                                          encoding="ogg_opus"))
            return audio, data, done.samples

    audio, data, samples = run(go())
    np.testing.assert_allclose(audio, soxr.resample(reference, 24_000, 16_000, quality="HQ"), atol=1e-6)
    decoded, rate, codec = decode_file(data)
    assert codec == "opus" and rate == 48_000 and decoded.size == samples == reference.size * 2


def test_cli_mulaw_at_8khz_writes_a_wav_at_8khz(server: ServerThread, reference: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "call.wav"
    rc = _cli([TEXT, "--url", server.url, "--encoding", "pcm_mulaw", "--sample-rate", "8000", "--no-play",
               "-o", str(out), *FLAGS])
    assert rc == 0
    audio, rate = read_wav(out)
    want = mulaw_decode(mulaw_encode(float_to_s16(soxr.resample(reference, 24_000, 8000, quality="HQ"))))
    assert rate == 8000 and audio.size == want.size
    assert np.abs(audio - want / np.float32(32767)).max() <= 1 / 32767 + 1e-6
    assert "at 8000 Hz" in capsys.readouterr().out


def test_cli_compressed_encoding_writes_the_container(server: ServerThread, reference: np.ndarray,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--encoding ogg_opus writes the Ogg file as sent (not played, and said so)."""
    out = tmp_path / "hello.ogg"
    rc = _cli([TEXT, "--url", server.url, "--encoding", "ogg_opus", "--sample-rate", "48000", "-o", str(out),
               *FLAGS])
    assert rc == 0
    captured = capsys.readouterr()
    assert "ogg_opus is not played" in captured.err and f"wrote {out}" in captured.out
    audio, rate, codec = decode_file(out.read_bytes())
    assert codec == "opus" and rate == 48_000 and audio.size == 2 * reference.size


@needs_portaudio
def test_cli_output_without_a_device_writes_a_compressed_file(server: ServerThread, tmp_path: Path) -> None:
    """No audio device at all (ALSA config without one) and --encoding mp3: the MP3 file is still written."""
    out = tmp_path / "kept.mp3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALSA_", "JACK_"))}
    env.update(ALSA_CONFIG_PATH=str(ALSA_DIR / "no_device.conf"), JACK_NO_START_SERVER="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))

    async def go() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client", TEXT, "--url", server.url, "--encoding", "mp3", "-o", str(out), *FLAGS,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, stdout.decode(), stderr.decode()

    rc, stdout, err = run(go())
    assert rc == 0, err
    assert f"wrote {out}" in stdout
    assert decode_file(out.read_bytes())[1] == 24_000


@pytest.mark.parametrize("argv, message", [
    (["hi", "--encoding", "ogg_opus", "--sample-rate", "44100", "-o", "x.ogg"],
     "--sample-rate: ogg_opus takes 8000, 16000, 24000, 48000, not 44100"),
    (["hi", "--encoding", "mp3"], "--encoding mp3: this client plays PCM encodings only; add --output FILE"),
    (["hi", "--sample-rate", "11025"], "--sample-rate: invalid choice: 11025"),
])
def test_cli_refuses_impossible_formats_naming_the_flag(argv: list[str], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_progress_line_on_a_terminal_and_silence_elsewhere() -> None:
    """On a terminal the line shows audio received, TTFA and RTF and is erased before the summary; on a
    pipe nothing is drawn unless --progress asks for it."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    report = RunReport(sent_at=100.0)
    report.seen(AudioChunk("r1", 0, 0, np.zeros(12_000, np.float32), b""), 100.4)
    term = Terminal()
    progress = Progress(term, 24_000)
    progress.update(report, 101.0)
    line = "audio   0.50 s | TTFA 400 ms | RTF 2.00"
    assert term.getvalue() == "\r" + line
    progress.update(report, 101.01)  # within the redraw interval: nothing more
    progress.clear()
    assert term.getvalue() == "\r" + line + "\r" + " " * len(line) + "\r"
    pipe = io.StringIO()
    Progress(pipe, 24_000).update(report, 101.0)
    assert pipe.getvalue() == ""
    forced = io.StringIO()
    Progress(forced, 24_000, enabled=True).update(report, 101.0)
    assert "TTFA 400 ms" in forced.getvalue()


def test_cli_progress_flag_draws_on_stderr(server: ServerThread, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = _cli([TEXT, "--url", server.url, "--no-play", "-o", str(tmp_path / "p.wav"), "--progress", *FLAGS])
    assert rc == 0
    err = capsys.readouterr().err
    assert "\raudio" in err and "TTFA" in err and "RTF" in err
