"""Tests of the webhook transport that checks addresses at connection time.

Requests are real HTTP to servers these tests start on 127.0.0.1 or ::1. Host
names go through a fake resolver, never DNS. Blocked addresses appear only as
values that resolver returns. Tests that feed them replace the network backend
with ``LoopbackGuard``, which fails the test on any connection attempt to an
address other than 127.0.0.1 or ::1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpcore
import httpx
import pytest

from relay import url_safety
from relay.safe_transport import (
    BlockedAddressError,
    SafeTransport,
    build_safe_client,
    resolve_host,
)

T = TypeVar("T")

HOST = "hooks.test"
LOOPBACK_NETWORKS = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
IPV4_LOOPBACK_NETWORK = (ipaddress.ip_network("127.0.0.0/8"),)
TIMEOUT_S = 5.0


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not ipv6_loopback_available(), reason="IPv6 loopback (::1) is not available"
)


@dataclass
class RecordedRequest:
    """One request as the loopback server read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LoopbackServer:
    """A minimal HTTP/1.1 server that records every connection and request."""

    port: int = 0
    connections: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ")
            headers = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(RecordedRequest(method, target, headers, body))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(
    host: str, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[LoopbackServer]:
    server = LoopbackServer()
    listener = await asyncio.start_server(server.handle, host, 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


@contextmanager
def closed_port(host: str, port: int = 0) -> Iterator[int]:
    """Hold ``host``:``port`` bound without listening, so connections are refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.bind((host, port))
        yield holder.getsockname()[1]


class FakeResolver:
    """A resolver that returns scripted address lists in turn and counts calls.

    After the last list, it keeps returning that list.
    """

    def __init__(self, *results: list[str]) -> None:
        self.results = results
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.results[min(len(self.calls), len(self.results)) - 1]


class LoopbackGuard(httpcore.AsyncNetworkBackend):
    """Connect through httpcore's AnyIO backend, to loopback addresses only."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.attempts.append(host)
        if host not in ("127.0.0.1", "::1"):
            raise AssertionError(f"transport tried to connect to {host}")
        return await self._backend.connect_tcp(host, port, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def guarded_client(
    allowed: Iterable[url_safety.Network],
    resolver: FakeResolver,
    timeout_s: float = TIMEOUT_S,
) -> tuple[httpx.AsyncClient, LoopbackGuard]:
    guard = LoopbackGuard()
    transport = SafeTransport(allowed, resolver=resolver, network_backend=guard)
    client = httpx.AsyncClient(transport=transport, timeout=timeout_s, trust_env=False)
    return client, guard


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await scenario()

    return asyncio.run(main())


def test_safe_client_posts_to_checked_address() -> None:
    resolver = FakeResolver(["127.0.0.1"])

    async def scenario() -> None:
        async with serving("127.0.0.1") as server:
            async with build_safe_client(
                TIMEOUT_S, LOOPBACK_NETWORKS, resolver=resolver
            ) as client:
                url = f"http://{HOST}:{server.port}/x"
                response = await client.post(url, content=b"payload")

            assert response.status_code == 200
            assert response.text == "ok"
            assert len(server.requests) == 1
            request = server.requests[0]
            assert request.method == "POST"
            assert request.target == "/x"
            assert request.headers["host"] == f"{HOST}:{server.port}"
            assert request.body == b"payload"
            assert resolver.calls == [(HOST, server.port)]

    run(scenario)


@needs_ipv6
def test_safe_client_posts_over_ipv6_loopback() -> None:
    resolver = FakeResolver(["::1"])

    async def scenario() -> None:
        async with serving("::1") as server:
            async with build_safe_client(
                TIMEOUT_S, LOOPBACK_NETWORKS, resolver=resolver
            ) as client:
                response = await client.post(f"http://{HOST}:{server.port}/x")

            assert response.status_code == 200
            assert len(server.requests) == 1
            assert server.requests[0].headers["host"] == f"{HOST}:{server.port}"
            assert len(resolver.calls) == 1

    run(scenario)


def test_safe_client_rejects_loopback_by_default() -> None:
    resolver = FakeResolver(["127.0.0.1"])

    async def scenario() -> None:
        async with serving("127.0.0.1") as server:
            async with build_safe_client(TIMEOUT_S, (), resolver=resolver) as client:
                with pytest.raises(BlockedAddressError) as caught:
                    await client.post(f"http://{HOST}:{server.port}/x")

            message = str(caught.value)
            assert message == (
                "callback host hooks.test resolves to a blocked address: "
                "127.0.0.1 is not a public address"
            )
            assert caught.value.host == HOST
            assert server.connections == 0
            assert len(resolver.calls) == 1

    run(scenario)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",
        "192.168.1.1",
        "172.16.0.1",
        "100.64.0.1",
        "169.254.169.254",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
    ],
)
def test_transport_rejects_blocked_resolved_address(address: str) -> None:
    resolver = FakeResolver([address])
    client, guard = guarded_client((), resolver)

    async def scenario() -> None:
        async with client:
            with pytest.raises(BlockedAddressError) as caught:
                await client.post(f"http://{HOST}:8080/x")

        message = str(caught.value)
        assert message.startswith("callback host hooks.test resolves to")
        assert str(ipaddress.ip_address(address)) in message
        assert isinstance(caught.value, httpx.ConnectError)
        assert guard.attempts == []
        assert resolver.calls == [(HOST, 8080)]

    run(scenario)


def test_transport_rejects_public_and_blocked_mix() -> None:
    resolver = FakeResolver(["127.0.0.1", "10.0.0.5"])
    client, guard = guarded_client(IPV4_LOOPBACK_NETWORK, resolver)

    async def scenario() -> None:
        async with serving("127.0.0.1") as server, client:
            with pytest.raises(BlockedAddressError) as caught:
                await client.post(f"http://{HOST}:{server.port}/x")

            assert "10.0.0.5 is not a public address" in str(caught.value)
            assert guard.attempts == []
            assert server.connections == 0

    run(scenario)


def test_transport_resolves_once_per_request() -> None:
    resolver = FakeResolver(["127.0.0.1"])
    client, guard = guarded_client(IPV4_LOOPBACK_NETWORK, resolver)

    async def scenario() -> None:
        async with serving("127.0.0.1") as server, client:
            for _ in range(3):
                response = await client.post(f"http://{HOST}:{server.port}/x")
                assert response.status_code == 200

            # The server closes every connection, so each request connects anew.
            assert len(server.requests) == 3
            assert len(resolver.calls) == 3
            assert guard.attempts == ["127.0.0.1"] * 3

    run(scenario)


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f.0.0.1", "[::ffff:127.0.0.1]", "localhost"],
)
def test_transport_rejects_loopback_host_forms(host: str) -> None:
    resolver = FakeResolver(["127.0.0.1"])
    client, guard = guarded_client((), resolver)

    async def scenario() -> None:
        async with serving("127.0.0.1") as server, client:
            with pytest.raises(BlockedAddressError) as caught:
                await client.post(f"http://{host}:{server.port}/x")

            assert "is blocked" in str(caught.value)
            assert "127.0.0.1" in str(caught.value)
            assert resolver.calls == []
            assert guard.attempts == []
            assert server.connections == 0

    run(scenario)


def test_transport_allows_literal_in_allowed_network() -> None:
    resolver = FakeResolver(["10.0.0.5"])
    client, guard = guarded_client(IPV4_LOOPBACK_NETWORK, resolver)

    async def scenario() -> None:
        async with serving("127.0.0.1") as server, client:
            response = await client.post(f"http://127.0.0.1:{server.port}/x")

            assert response.status_code == 200
            assert len(server.requests) == 1
            assert resolver.calls == []
            assert guard.attempts == ["127.0.0.1"]

    run(scenario)


def test_transport_ignores_rebinding_result() -> None:
    # Only the first result passes the check. A second resolution before
    # connecting would return the blocked address instead.
    resolver = FakeResolver(["127.0.0.1"], ["198.51.100.7"])
    client, guard = guarded_client(IPV4_LOOPBACK_NETWORK, resolver)

    async def scenario() -> None:
        async with serving("127.0.0.1") as server, client:
            response = await client.post(f"http://{HOST}:{server.port}/x")

            assert response.status_code == 200
            assert len(server.requests) == 1
            assert len(resolver.calls) == 1
            assert guard.attempts == ["127.0.0.1"]

    run(scenario)


def test_transport_rejects_blocked_first_result() -> None:
    resolver = FakeResolver(["198.51.100.7"], ["127.0.0.1"])
    client, guard = guarded_client(IPV4_LOOPBACK_NETWORK, resolver)

    async def scenario() -> None:
        async with serving("127.0.0.1") as server, client:
            with pytest.raises(BlockedAddressError) as caught:
                await client.post(f"http://{HOST}:{server.port}/x")

            assert "198.51.100.7 is not a public address" in str(caught.value)
            assert len(resolver.calls) == 1
            assert guard.attempts == []
            assert server.connections == 0

    run(scenario)


@needs_ipv6
def test_transport_tries_addresses_in_order() -> None:
    async def scenario() -> None:
        async with serving("127.0.0.1") as server:
            resolver = FakeResolver(["::1", "127.0.0.1"])
            client, guard = guarded_client(LOOPBACK_NETWORKS, resolver)
            with closed_port("::1", server.port):
                async with client:
                    response = await client.post(f"http://{HOST}:{server.port}/x")

            assert response.status_code == 200
            assert guard.attempts == ["::1", "127.0.0.1"]
            assert len(resolver.calls) == 1

    run(scenario)


def test_transport_reports_refused_connection() -> None:
    resolver = FakeResolver(["127.0.0.1"])
    client, guard = guarded_client(IPV4_LOOPBACK_NETWORK, resolver)

    async def scenario() -> None:
        with closed_port("127.0.0.1") as port:
            async with client:
                with pytest.raises(httpx.ConnectError) as caught:
                    await client.post(f"http://{HOST}:{port}/x")

        assert not isinstance(caught.value, BlockedAddressError)
        expected = f"failed to connect to hooks.test port {port} at 127.0.0.1"
        assert str(caught.value).startswith(expected)
        assert guard.attempts == ["127.0.0.1"]

    run(scenario)


def test_transport_reports_resolver_failure() -> None:
    async def failing_resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    transport = SafeTransport((), resolver=failing_resolver)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.post(f"http://{HOST}:8080/x")

        assert not isinstance(caught.value, BlockedAddressError)
        assert str(caught.value).startswith(
            "failed to resolve callback host hooks.test"
        )

    run(scenario)


def test_transport_times_out_slow_resolver() -> None:
    async def slow_resolver(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return ["127.0.0.1"]

    transport = SafeTransport(IPV4_LOOPBACK_NETWORK, resolver=slow_resolver)

    async def scenario() -> None:
        async with httpx.AsyncClient(
            transport=transport, timeout=0.2, trust_env=False
        ) as client:
            with pytest.raises(httpx.ConnectTimeout) as caught:
                await client.post(f"http://{HOST}:8080/x")

        assert "resolving callback host hooks.test timed out" in str(caught.value)

    run(scenario)


def test_transport_rejects_invalid_resolved_address() -> None:
    resolver = FakeResolver(["127.0.0.1", "not-an-address"])
    client, guard = guarded_client(IPV4_LOOPBACK_NETWORK, resolver)

    async def scenario() -> None:
        async with client:
            with pytest.raises(BlockedAddressError) as caught:
                await client.post(f"http://{HOST}:8080/x")

        assert "'not-an-address' is not an IP address" in str(caught.value)
        assert guard.attempts == []

    run(scenario)


def test_transport_reports_empty_resolution() -> None:
    resolver = FakeResolver([])
    client, guard = guarded_client(IPV4_LOOPBACK_NETWORK, resolver)

    async def scenario() -> None:
        async with client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.post(f"http://{HOST}:8080/x")

        assert str(caught.value) == "callback host hooks.test resolved to no addresses"
        assert guard.attempts == []

    run(scenario)


def test_resolve_host_returns_numeric_address() -> None:
    # A numeric host is parsed by getaddrinfo itself and sends no DNS query.
    assert run(lambda: resolve_host("127.0.0.1", 80)) == ["127.0.0.1"]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder with a self-signed certificate and key for each test name."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to create test certificates")
    folder = tmp_path_factory.mktemp("certificates")
    for name in (HOST, "other.test"):
        key, certificate = folder / f"{name}.key", folder / f"{name}.crt"
        command = ["openssl", "req", "-x509", "-nodes", "-days", "1"]
        command += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        command += ["-keyout", str(key), "-out", str(certificate)]
        command += ["-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]
        subprocess.run(command, check=True, capture_output=True)
    return folder


def tls_server_context(
    certificates: Path, name: str, server_names: list[str | None]
) -> ssl.SSLContext:
    """Return a server context for ``name``'s certificate that records SNI names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates / f"{name}.crt", certificates / f"{name}.key")

    def record_name(
        connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        server_names.append(server_name)

    context.sni_callback = record_name
    return context


def test_safe_client_verifies_certificate_name(certificates: Path) -> None:
    resolver = FakeResolver(["127.0.0.1"])
    server_names: list[str | None] = []
    server_context = tls_server_context(certificates, HOST, server_names)
    trusted = ssl.create_default_context(cafile=certificates / f"{HOST}.crt")

    async def scenario() -> None:
        async with serving("127.0.0.1", server_context) as server:
            async with build_safe_client(
                TIMEOUT_S, IPV4_LOOPBACK_NETWORK, resolver=resolver, verify=trusted
            ) as client:
                response = await client.post(f"https://{HOST}:{server.port}/x")

            assert response.status_code == 200
            assert len(server.requests) == 1
            assert server.requests[0].headers["host"] == f"{HOST}:{server.port}"
            assert server_names == [HOST]
            assert len(resolver.calls) == 1

    run(scenario)


def test_safe_client_rejects_certificate_for_other_name(
    certificates: Path,
) -> None:
    resolver = FakeResolver(["127.0.0.1"])
    server_names: list[str | None] = []
    server_context = tls_server_context(certificates, "other.test", server_names)
    # The client trusts the other certificate, so only its name can fail.
    trusted = ssl.create_default_context(cafile=certificates / "other.test.crt")

    async def scenario() -> None:
        async with serving("127.0.0.1", server_context) as server:
            async with build_safe_client(
                TIMEOUT_S, IPV4_LOOPBACK_NETWORK, resolver=resolver, verify=trusted
            ) as client:
                with pytest.raises(httpx.ConnectError) as caught:
                    await client.post(f"https://{HOST}:{server.port}/x")

            assert not isinstance(caught.value, BlockedAddressError)
            assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
            assert "hooks.test" in str(caught.value)
            assert server_names == [HOST]
            assert server.requests == []

    run(scenario)
