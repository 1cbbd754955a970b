"""Address helpers with no server imports (server.config and the front ends both use them)."""

from __future__ import annotations

import ipaddress

LOOPBACK_HOSTS = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
