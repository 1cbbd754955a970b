"""Home Assistant's Wyoming protocol (text to speech) on `--wyoming-port`, beside the WebSocket server.

- `server`: `WyomingServer`, the TCP listener, its connections, drain/close and the optional
  zeroconf announcement;
- `session`: one connection: `describe` -> `info`, `synthesize`, streaming
  `synthesize-start/chunk/stop` -> `audio-start/chunk/stop` (+ `synthesize-stopped`);
- `events`: bounded event reading, the `info` event, voice languages.

It serves the same engine, voices, limits and metrics as the WebSocket (one `RequestLayer`),
on the same event loop. Wyoming has no authentication: it binds to loopback unless told otherwise.
"""

from .server import WyomingServer

__all__ = ["WyomingServer"]
