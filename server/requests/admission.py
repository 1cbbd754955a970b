"""Who may have how much, counted across every front end: connections per address, requests per address and
per API key. The engine itself enforces the slots, the queue and the per-connection share (its `owner`).

    admission.connect(address)             # False: the address has max_connections_per_ip open
    admission.admit(address, key, req_id)  # ProtocolError rate_limited, else counted
    admission.release(address, key)       # exactly once per admitted request
"""

from __future__ import annotations

from collections import Counter

from protocol import ProtocolError
from streaming.errors import ErrorCode

from ..config import ServerConfig
from ..limits import AddressBuckets


class Admission:
    """The counters behind the caps that span connections and doors (WebSocket, HTTP, Wyoming)."""

    def __init__(self, config: ServerConfig) -> None:
        self._cfg = config
        self.connections: Counter[str] = Counter()  # open connections per client address, all doors
        self.requests: Counter[str] = Counter()  # requests in flight per client address, all doors
        self.keys: Counter[int] = Counter()  # requests in flight per API key index, all doors
        self.http = AddressBuckets(config.http_limit_per_s, config.http_limit_burst)  # every HTTP request, any port

    # --- connections ---------------------------------------------------------------------------------
    def connect(self, address: str, *, counted: bool = True) -> bool:
        """Count a new connection from `address`; False (not counted) when the address is at its cap.
        `counted=False`: a connection not held against the cap (a trusted proxy's)."""
        cap = self._cfg.max_connections_per_ip
        if not counted:
            return True
        if cap is not None and self.connections[address] >= cap:
            return False
        self.connections[address] += 1
        return True

    def disconnect(self, address: str) -> None:
        _decrement(self.connections, address)

    def http_request(self, address: str, now: float) -> bool:
        """One HTTP request from `address` (any path, any port, before any other work): False past the limit."""
        return self.http.take(address, now)

    # --- requests ------------------------------------------------------------------------------------
    def admit(self, address: str, key: int | None, req_id: str | None) -> None:
        """Count a request, or raise rate_limited naming the cap it would break."""
        cfg = self._cfg
        per_ip = cfg.max_requests_per_ip
        if per_ip is not None and self.requests[address] >= per_ip:
            raise ProtocolError(ErrorCode.RATE_LIMITED, f"your address has {per_ip} requests in flight "
                                "(max_requests_per_ip, every protocol counted); retry when one ends", id=req_id,
                                fatal=False, retry_after_ms=1000)
        per_key = cfg.max_streams_per_key
        if per_key is not None and key is not None and self.keys[key] >= per_key:
            raise ProtocolError(ErrorCode.RATE_LIMITED, f"this API key has {per_key} requests in flight "
                                "(max_streams_per_key, every protocol counted); retry when one ends", id=req_id,
                                fatal=False, retry_after_ms=1000)
        self.requests[address] += 1
        if key is not None:
            self.keys[key] += 1

    def release(self, address: str, key: int | None) -> None:
        _decrement(self.requests, address)
        if key is not None:
            _decrement(self.keys, key)


def _decrement(counter: Counter, name: object) -> None:  # type: ignore[type-arg]
    counter[name] -= 1
    if counter[name] <= 0:
        del counter[name]
