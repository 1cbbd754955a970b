"""--wyoming-zeroconf on a real mDNS stack: the server announces `<name>._wyoming._tcp.local.` as Home Assistant's
discovery expects (its address and the Wyoming port), a client that found it that way is served, and the
announcement is withdrawn when the server stops. Skipped, saying why, on a host where multicast does not reach
back (a probe service registered and looked up first)."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator

import pytest
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from server.wyoming.server import SERVICE_TYPE, _outbound_address
from tests.server_fixtures import PARAMS, ServerThread, engine, run, start_server  # noqa: F401

LOOKUP_MS = 3000


async def lookup(name: str) -> AsyncServiceInfo | None:
    """Ask the network for `name`, from a Zeroconf instance of our own (a separate responder cache)."""
    zc = AsyncZeroconf()
    try:
        return await zc.async_get_service_info(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", timeout=LOOKUP_MS)
    finally:
        await zc.async_close()


async def mdns_reaches_back() -> bool:
    name = f"probe-{uuid.uuid4().hex[:8]}"
    zc = AsyncZeroconf()
    info = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", server="probe.local.", port=9,
                            addresses=[ipaddress.ip_address(_outbound_address()).packed])
    try:
        await zc.async_register_service(info)
        return await lookup(name) is not None
    finally:
        await zc.async_unregister_service(info)
        await zc.async_close()


@pytest.fixture(scope="module")
def mdns() -> None:
    try:
        reachable = run(mdns_reaches_back(), timeout=30)
    except OSError as exc:
        pytest.skip(f"mDNS does not work on this host: {exc}")
    if not reachable:
        pytest.skip("mDNS does not reach back on this host (no multicast on its interfaces)")


@pytest.fixture(scope="module")
def announced(engine, mdns: None) -> Iterator[tuple[ServerThread, str]]:  # noqa: F811
    name = f"bark-test-{uuid.uuid4().hex[:8]}"
    srv = start_server(engine, wyoming_port=0, wyoming_host="0.0.0.0", wyoming_zeroconf=name,
                       wyoming_params=tuple(PARAMS.items()))
    yield srv, name
    srv.stop()


def test_the_server_is_found_by_mdns_and_serves_who_found_it(announced: tuple[ServerThread, str]) -> None:
    srv, name = announced

    async def go() -> tuple[AsyncServiceInfo | None, str]:
        info = await lookup(name)
        assert info is not None, f"{name}.{SERVICE_TYPE} not found"
        address = str(ipaddress.ip_address(info.addresses[0]))
        async with AsyncTcpClient(address, info.port, connect_timeout=10, read_timeout=30) as client:
            await client.write_event(Describe().event())
            event = await client.read_event()
        assert event is not None and Info.is_type(event.type)
        return info, Info.from_event(event).tts[0].name

    info, program = run(go())
    assert info is not None and info.port == srv.server.wyoming_port  # type: ignore[union-attr]
    assert str(ipaddress.ip_address(info.addresses[0])) == _outbound_address()
    assert info.properties[b"model"] == b"random-tiny"
    assert program == "bark-stream"


def test_the_announcement_is_withdrawn_when_the_server_stops(engine, mdns: None) -> None:  # noqa: F811
    name = f"bark-test-{uuid.uuid4().hex[:8]}"
    srv = start_server(engine, wyoming_port=0, wyoming_host="0.0.0.0", wyoming_zeroconf=name)
    try:
        assert run(lookup(name)) is not None
    finally:
        srv.stop()
    assert run(lookup(name)) is None  # unregistered (a goodbye packet), not left to expire

