"""`python -m server` options of the integrations: the Wyoming server (Home Assistant) and the browser page.

Kept apart from server/__main__.py, which calls `add_arguments` and `config_kwargs`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from streaming.errors import ConfigError

from .config import ServerConfig

WYOMING_CONVENTIONAL_PORT = 10200  # wyoming-piper's port, what Home Assistant users expect


def add_arguments(parser: argparse.ArgumentParser, d: ServerConfig) -> None:
    wy = parser.add_argument_group("Wyoming (Home Assistant)")
    wy.add_argument("--wyoming-port", type=int, default=None, metavar="PORT",
                    help=f"also serve Wyoming text to speech on this TCP port (default: off; Home Assistant's "
                         f"convention is {WYOMING_CONVENTIONAL_PORT})")
    wy.add_argument("--wyoming-host", default=d.wyoming_host, metavar="HOST",
                    help=f"interface of the Wyoming port (default {d.wyoming_host}: Wyoming has no authentication, "
                         "so only this machine; 0.0.0.0 for Home Assistant on another host, behind a firewall)")
    wy.add_argument("--wyoming-sample-rate", type=int, default=d.wyoming_sample_rate, metavar="HZ",
                    help=f"rate of the s16 mono audio sent over Wyoming (default {d.wyoming_sample_rate}, the "
                         "model's own; 8000, 16000, 22050, 44100, 48000 resample)")
    wy.add_argument("--wyoming-params", default=None, metavar="JSON",
                    help="sampling and streaming parameters for every Wyoming request, as the WebSocket's params "
                         "map in JSON (e.g. '{\"text_temp\": 0.6, \"waveform_temp\": 0.6}'); default: none")
    wy.add_argument("--wyoming-zeroconf", nargs="?", const="", default=None, metavar="NAME",
                    help="announce the Wyoming server over mDNS (_wyoming._tcp.local.) so Home Assistant discovers "
                         "it; NAME defaults to bark-stream-<hostname>; needs a non-loopback --wyoming-host and "
                         "the zeroconf package (pip install 'bark-stream[zeroconf]')")
    web = parser.add_argument_group("browser page")
    web.add_argument("--no-web-page", dest="web_page", action="store_false",
                     help="do not serve the try-it page at / on the WebSocket port (default: served)")


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields from the options above; ConfigError naming the flag for bad JSON."""
    params: tuple[tuple[str, object], ...] = ()
    if args.wyoming_params is not None:
        try:
            value = json.loads(args.wyoming_params)
        except ValueError as exc:
            raise ConfigError(f"--wyoming-params: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ConfigError("--wyoming-params: expected a JSON object, e.g. '{\"text_temp\": 0.6}'")
        params = tuple(value.items())
    return {"wyoming_port": args.wyoming_port, "wyoming_host": args.wyoming_host,
            "wyoming_sample_rate": args.wyoming_sample_rate, "wyoming_params": params,
            "wyoming_zeroconf": args.wyoming_zeroconf, "web_page": args.web_page}
