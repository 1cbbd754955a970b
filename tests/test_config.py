"""ServerConfig's options: one declaration per field, and the three sources made of it (flags, BARK_* variables,
the --config TOML file) agree, take precedence in that order, and name the source and the valid values when a
value is bad; --help shows the groups and defaults in human units. No model is loaded here."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.__main__ import build_parser, config_from_args, main
from server.config import GROUPS, OPTIONS, ServerConfig
from server.options import Option, leaves
from streaming.errors import ConfigError

# every flag of the parser before the options were declared in one place: each one must keep working
OLD_FLAGS = (
    "--host", "--port", "--http-port", "--model", "--device", "--dtype", "--codec", "--codec-dtype", "--quantize",
    "--cuda-graphs", "--tokenizer", "--voices", "--default-voice", "--voice-alias", "--offline", "--local-files-only",
    "--max-streams", "--max-queue", "--coarse-prefix-slots", "--max-connections", "--refuse-when-full",
    "--max-streams-per-connection", "--max-connections-per-ip", "--max-streams-per-key", "--max-bytes-per-s",
    "--max-frames-per-s", "--request-text-timeout", "--trusted-proxy", "--max-frame-bytes", "--max-text-chars",
    "--max-request-chars", "--max-ids-in-flight", "--http-max-requests", "--http-max-connections",
    "--http-requests-per-s", "--http-request-burst", "--send-queue-frames", "--compression", "--max-messages-per-s",
    "--message-burst", "--rate-limit-strikes", "--max-buffer-s", "--idle-timeout", "--slow-consumer-timeout",
    "--ping-interval", "--ping-timeout", "--open-timeout", "--close-timeout", "--drain-timeout", "--api-key-file",
    "--api-key-env", "--allowed-origin", "--public-metrics", "--ssl-certfile", "--ssl-keyfile", "--wyoming-port",
    "--wyoming-host", "--wyoming-sample-rate", "--wyoming-params", "--wyoming-zeroconf", "--no-web-page",
    "--log-level",
)


def load(argv: list[str], env: dict[str, str] | None = None) -> ServerConfig:
    return config_from_args(build_parser().parse_args(argv), env or {})


def test_every_field_has_exactly_one_declaration_in_group_order() -> None:
    fields = dataclasses.fields(ServerConfig)
    assert all(isinstance(f.metadata.get("option"), Option) for f in fields)
    assert [o.key for o in OPTIONS if o.path] == [f.name for f in fields]
    flat = list(leaves(OPTIONS))
    for names in ([o.key for o in flat], [o.env_name for o in flat if o.env_name],
                  [flag for o in flat if not o.secret for flag in o.names]):
        assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    order = [GROUPS.index(o.group) for o in OPTIONS if o.path]
    assert order == sorted(order), "fields are declared group by group, in GROUPS order"
    sizes = {g.title: sum(o.group == g for o in flat) for g in GROUPS}
    assert max(sizes.values()) <= 15, sizes
    for new in ("engine_mode", "metrics_host", "metrics_port", "http_limit_per_s", "http_limit_burst",
                "max_requests_per_ip"):
        assert new in {f.name for f in fields}


def test_every_old_flag_still_parses() -> None:
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    assert set(OLD_FLAGS) <= flags
    config = load(["--local-files-only", "--no-web-page", "--voices", ".", "--trusted-proxy", "10.0.0.1",
                   "--trusted-proxy", "10.1.0.0/16", "--allowed-origin", "https://a.example", "--wyoming-port",
                   "0", "--wyoming-host", "0.0.0.0", "--wyoming-zeroconf", "--idle-timeout", "0",
                   "--ping-interval", "off", "--max-frame-bytes", "1000", "--engine", "thread"])
    assert config.offline and not config.web_page and config.voices_dir == Path(".")
    assert config.trusted_proxies == ("10.0.0.1", "10.1.0.0/16")
    assert config.allowed_origins == ("https://a.example",)
    assert config.wyoming_zeroconf == "" and config.idle_timeout is None and config.ping_interval is None
    assert config.limits.max_frame_bytes == 1000 and config.engine_mode == "thread"


def _three_sources(tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    voices = tmp_path / "voices"
    voices.mkdir(exist_ok=True)
    argv = ["--port", "9001", "--metrics-port", "9002", "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1",
            "--model", "random-tiny", "--dtype", "bf16", "--engine", "thread", "--voices", str(voices),
            "--voice-alias", "narrator=v2/de_speaker_1", "--voice-alias", "alloy=v2/en_speaker_9", "--offline",
            "--max-streams", "3", "--max-requests-per-ip", "4", "--max-text-chars", "100",
            "--compression", "--max-bytes-per-s", "2048", "--http-limit-per-s", "7.5", "--idle-timeout", "off",
            "--request-text-timeout", "12", "--allowed-origin", "https://a.example", "--wyoming-host", "0.0.0.0",
            "--wyoming-port", "10200", "--wyoming-params", '{"text_temp": 0.6}', "--wyoming-zeroconf", "kitchen",
            "--no-web-page", "--log-level", "debug"]
    env = {"BARK_PORT": "9001", "BARK_METRICS_PORT": "9002", "BARK_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
           "BARK_MODEL": "random-tiny", "BARK_DTYPE": "bf16", "BARK_ENGINE_MODE": "thread",
           "BARK_VOICES_DIR": str(voices), "BARK_VOICE_ALIASES": "narrator=v2/de_speaker_1,alloy=v2/en_speaker_9",
           "BARK_OFFLINE": "yes", "BARK_MAX_STREAMS": "3", "BARK_MAX_REQUESTS_PER_IP": "4",
           "BARK_MAX_TEXT_CHARS": "100", "BARK_COMPRESSION": "on", "BARK_MAX_BYTES_PER_S": "2048",
           "BARK_HTTP_LIMIT_PER_S": "7.5", "BARK_IDLE_TIMEOUT": "0", "BARK_REQUEST_TEXT_TIMEOUT": "12",
           "BARK_ALLOWED_ORIGINS": "https://a.example", "BARK_WYOMING_HOST": "0.0.0.0",
           "BARK_WYOMING_PORT": "10200", "BARK_WYOMING_PARAMS": '{"text_temp": 0.6}',
           "BARK_WYOMING_ZEROCONF": "kitchen", "BARK_WEB_PAGE": "false", "BARK_LOG_LEVEL": "debug"}
    toml = f"""
[network]
port = 9001
metrics_port = 9002
trusted_proxies = ["10.0.0.0/8", "::1"]
[model]
model = "random-tiny"
dtype = "bf16"
engine_mode = "thread"
voices_dir = {str(voices)!r}
voice_aliases = {{narrator = "v2/de_speaker_1", alloy = "v2/en_speaker_9"}}
offline = true
[limits.engine]
max_streams = 3
max_requests_per_ip = 4
[limits.connection]
max_text_chars = 100
compression = true
[limits.rates]
max_bytes_per_s = 2048
[limits.http]
http_limit_per_s = 7.5
[timeouts]
idle_timeout = "off"
request_text_timeout = 12
[security]
allowed_origins = ["https://a.example"]
[integrations]
wyoming_host = "0.0.0.0"
wyoming_port = 10200
wyoming_params = {{text_temp = 0.6}}
wyoming_zeroconf = "kitchen"
web_page = false
[general]
log_level = "debug"
"""
    return argv, env, toml


def test_flags_environment_and_file_give_the_same_config(tmp_path: Path) -> None:
    argv, env, toml = _three_sources(tmp_path)
    (tmp_path / "bark.toml").write_text(toml)
    from_flags = load(argv)
    assert from_flags == load([], env) == load(["--config", str(tmp_path / "bark.toml")])
    assert from_flags != ServerConfig()
    assert dict(from_flags.voice_aliases)["alloy"] == "v2/en_speaker_9"  # overrides OpenAI's default alias
    assert dict(from_flags.voice_aliases)["nova"] == "v2/en_speaker_6"  # the other defaults stay
    assert from_flags.limits.max_text_chars == 100 and from_flags.max_bytes_per_s == 2048
    assert from_flags.idle_timeout is None and from_flags.wyoming_params == (("text_temp", 0.6),)


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[network]\nport = 1001\n[limits.engine]\nmax_streams = 2\nmax_queue = 3\n"
                                     "[limits.connection]\ncompression = true\n")
    (tmp_path / "b.toml").write_text("[limits.engine]\nmax_queue = 7\n")
    env = {"BARK_CONFIG": str(tmp_path / "a.toml"), "BARK_PORT": "2002", "BARK_MAX_STREAMS": "4"}
    config = load(["--max-streams", "6"], env)
    assert (config.max_streams, config.port, config.max_queue, config.compression) == (6, 2002, 3, True)
    assert config.max_connections == ServerConfig().max_connections
    assert not load(["--no-compression"], env).compression  # a switch the file turned on, turned off
    assert load(["--config", str(tmp_path / "b.toml")], env).max_queue == 7  # --config beats BARK_CONFIG
    assert load([], {**env, "BARK_PORT": ""}).port == 1001  # an empty variable counts as unset


@pytest.mark.parametrize(("source", "expected"), [
    ("flag", "--engine: 'fork' is not one of process, thread"),
    ("env", "environment variable BARK_ENGINE_MODE: 'fork' is not one of process, thread"),
    ("file", "bark.toml: [model] engine_mode: 'fork' is not one of process, thread"),
    ("field", "engine_mode: 'fork' is not one of process, thread"),
])
def test_a_bad_choice_names_its_source_and_the_choices(tmp_path: Path, source: str, expected: str) -> None:
    (tmp_path / "bark.toml").write_text('[model]\nengine_mode = "fork"\n')
    with pytest.raises(ConfigError) as err:
        if source == "flag":
            load(["--engine", "fork"])
        elif source == "env":
            load([], {"BARK_ENGINE_MODE": "fork"})
        elif source == "file":
            load(["--config", str(tmp_path / "bark.toml")])
        else:
            ServerConfig(engine_mode="fork")
    assert expected in str(err.value)


@pytest.mark.parametrize(("argv", "env", "toml", "expected"), [
    (["--max-streams", "0"], {}, None, "--max-streams: expected an integer >= 1, got 0"),
    (["--max-streams", "many"], {}, None, "--max-streams: expected an integer >= 1, got 'many'"),
    ([], {"BARK_MAX_BYTES_PER_S": "-1"}, None, "environment variable BARK_MAX_BYTES_PER_S: expected a number > 0"),
    ([], {"BARK_COMPRESSION": "maybe"}, None, "BARK_COMPRESSION: expected true or false, got 'maybe'"),
    (["--port", "70000"], {}, None, "--port: expected an integer in 0..65535, got 70000"),
    (["--http-port", "x"], {}, None, "--http-port: expected an integer in 0..65535 (or off: off), got 'x'"),
    (["--trusted-proxy", "nope"], {}, None, "--trusted-proxy: 'nope' is not an IP address or network"),
    (["--voice-alias", "alloy"], {}, None, "--voice-alias: expected NAME=PRESET"),
    (["--wyoming-params", "[1]"], {}, None, "--wyoming-params: expected a JSON object"),
    (["--max-text-chars", "30000"], {}, None, "--max-text-chars (30000) exceeds max_request_chars (20000)"),
    ([], {}, "[limits.engine]\nmax_streams = '3'\n", "[limits.engine] max_streams: expected an integer >= 1, got '3'"),
    ([], {}, "[limits.engine]\nmax_stream = 3\n",
     "[limits.engine] max_stream: unknown key; did you mean max_streams? the keys of [limits.engine] are "),
    ([], {}, "[model]\nmax_streams = 3\n", "[model] max_streams: belongs in table [limits.engine]"),
    ([], {}, "max_streams = 3\n", "max_streams belongs in table [limits.engine], not at the top level"),
    ([], {}, "[engine]\nx = 1\n", "unknown table 'engine'; the tables are [general], "),
    ([], {}, "[security]\napi_keys = ['k']\n", "[security] api_keys: API keys are never read from the config file"),
    ([], {}, "[timeouts\n", "not a valid TOML file"),
])
def test_a_bad_value_names_the_option_and_the_valid_values(tmp_path: Path, argv: list[str], env: dict[str, str],
                                                          toml: str | None, expected: str) -> None:
    if toml is not None:
        (tmp_path / "bark.toml").write_text(toml)
        argv = ["--config", str(tmp_path / "bark.toml")]
    with pytest.raises(ConfigError) as err:
        load(argv, env)
    assert expected in str(err.value)
    if toml is not None:
        assert str(tmp_path / "bark.toml") in str(err.value)


def test_config_file_needs_python_3_11(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bark.toml").write_text("")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on 3.10: import tomllib fails
    with pytest.raises(ConfigError, match=r"--config .*bark.toml: reading a TOML file needs Python 3.11 or newer"):
        load(["--config", str(tmp_path / "bark.toml")])


def test_field_checks_name_the_field_and_the_valid_values() -> None:
    with pytest.raises(ConfigError, match=r"^max_streams: expected an integer >= 1, got 0$"):
        ServerConfig(max_streams=0)
    with pytest.raises(ConfigError, match=r"^metrics_port: expected an integer in 0..65535 \(or off: off\), got -1$"):
        ServerConfig(metrics_port=-1)
    with pytest.raises(ConfigError, match=r"^http_limit_per_s: expected a number > 0, got 0"):
        ServerConfig(http_limit_per_s=0)
    with pytest.raises(ConfigError, match=r"^log_level: 'loud' is not one of debug, info, warning, error$"):
        ServerConfig(log_level="loud")
    with pytest.raises(ConfigError, match=r"^compression: expected true or false, got 1$"):
        ServerConfig(compression=1)  # type: ignore[arg-type]
    assert ServerConfig(port=0, max_streams=2).max_streams == 2  # flat keywords, flat access


def test_help_shows_groups_and_defaults_in_human_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    text = build_parser().format_help()
    entries = [" ".join(entry.split()) for entry in re.split(r"\n(?=  -)|\n\n", text)]
    for line in ("limits: engine:", "limits: per connection:", "limits: rates:", "limits: HTTP:", "timeouts:",
                 "network:", "model:", "security:", "integrations:", "config file table [limits.engine]"):
        assert f"\n{line}" in text or line in text, line
    for flag, default in (("--max-bytes-per-s BYTES", "(default: 1 MiB/s)"),
                          ("--max-frame-bytes BYTES", "(default: 64 KiB)"),
                          ("--request-text-timeout SECONDS", "(default: 30 s)"),
                          ("--metrics-port PORT", "(default: off)"),
                          ("--max-requests-per-ip N", "(default: no cap)"),
                          ("--engine {process,thread}", "(default: process) [key: engine_mode]"),
                          ("--http-limit-per-s N", "(default: 50/s)"),
                          ("--wyoming-sample-rate HZ", "(default: 24000 Hz)"),
                          ("--compression, --no-compression", "(default: off)")):
        entry = next(entry for entry in entries if entry.startswith(flag + " "))
        assert entry.endswith(default), entry
    assert "e+0" not in text  # never 1.04858e+06
    assert "precedence: command line > environment > config file > default" in text and "BARK_MAX_STREAMS" in text


def test_api_keys_come_only_from_their_sources_and_are_never_printed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keys.txt").write_text("# ops\nfile-secret\n")
    monkeypatch.setenv("MY_KEYS", "env-secret")
    config = load(["--api-key-file", str(tmp_path / "keys.txt"), "--api-key-env", "MY_KEYS"], {"MY_KEYS": "env-secret"})
    assert config.api_keys == ("file-secret", "env-secret")
    assert "--api-keys" not in build_parser().format_help() and "secret" not in repr(config)
    assert "api_keys" not in config.group("security")
    assert main(["--api-key-file", str(tmp_path / "keys.txt"), "--api-key-env", "MY_KEYS", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "secret" not in out and f'api_key_file = "{tmp_path / "keys.txt"}"' in out


def test_print_config_is_a_config_file_that_gives_the_same_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("BARK_")]:
        monkeypatch.delenv(name)
    argv, _, _ = _three_sources(tmp_path)
    assert main([*argv, "--print-config"]) == 0
    (tmp_path / "printed.toml").write_text(capsys.readouterr().out)
    assert load(["--config", str(tmp_path / "printed.toml")]) == load(argv)
    assert main(["--print-config"]) == 0
    (tmp_path / "defaults.toml").write_text(capsys.readouterr().out)
    assert load(["--config", str(tmp_path / "defaults.toml")]) == ServerConfig()


def test_group_gives_one_group_of_values() -> None:
    config = ServerConfig(max_streams=2, http_limit_burst=7)
    assert config.group("limits.engine")["max_streams"] == 2
    assert config.group("limits.http")["http_limit_burst"] == 7
    assert config.group("limits.connection")["max_frame_bytes"] == config.limits.max_frame_bytes
    assert set(config.group("network")) == {"host", "port", "http_port", "metrics_host", "metrics_port",
                                            "trusted_proxies"}
    with pytest.raises(KeyError, match="no option group 'limits'"):
        config.group("limits")


def test_server_config_imports_alone_without_the_server() -> None:
    """No import circle: server.config loads without server.context, the front ends or torch."""
    code = ("import sys, server.config; "
            "bad = [m for m in ('server.context', 'server.app', 'server.wyoming', 'server.wyoming.server', 'torch') "
            "if m in sys.modules]; assert not bad, bad; "
            "server.config.ServerConfig(wyoming_host='0.0.0.0', wyoming_port=0, wyoming_zeroconf='x')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
