"""An httpx transport that checks callback addresses when it connects (SSRF).

Checking a host's addresses and then letting httpx resolve it again leaves a
gap, because DNS can return other addresses the second time. This transport
resolves the host once per new connection, checks every address with
``url_safety``, and opens the TCP connection to one of those checked
addresses. TLS still uses the URL's hostname, because httpcore passes it
separately as ``server_hostname``, so SNI and certificate verification are
unchanged.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)

import anyio
import httpcore
import httpx

from relay import url_safety

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""An async function that returns the IP addresses of ``(host, port)`` as text."""

MAX_KEEPALIVE_CONNECTIONS = 50

# httpx's exception for each httpcore exception. The transport re-raises with
# the most specific match found along the exception's MRO.
_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}
_HTTPCORE_ERRORS = tuple(_HTTPX_ERRORS)


class BlockedAddressError(httpx.ConnectError):
    """A callback host that is, or resolves to, a blocked address.

    Raised before any connection is opened. ``reason`` is the rule's
    explanation from ``url_safety``.
    """

    def __init__(self, host: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.host = host
        self.reason = reason


async def resolve_host(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver and return its addresses.

    Addresses keep the resolver's order, without duplicates.
    """
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class CheckedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked addresses.

    Each ``connect_tcp`` call resolves the host once, rejects the host if any
    of its addresses is blocked, and then tries the addresses in order.
    """

    def __init__(
        self,
        allowed: Iterable[url_safety.Network] = (),
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allowed = tuple(allowed)
        self._resolver = resolver or resolve_host
        # Only checked IP addresses reach this backend, so it has no name to resolve.
        self._backend = network_backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        addresses = await self.checked_addresses(host, port, timeout)

        # NOTE: attempts run one after another with the time left, so an
        # address that drops packets uses up the timeout of the later ones.
        errors: list[httpcore.ConnectError] = []
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    str(address),
                    port,
                    timeout=_seconds_left(deadline, host),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                errors.append(exc)

        tried = ", ".join(str(address) for address in addresses)
        raise httpcore.ConnectError(
            f"failed to connect to {host} port {port} at {tried}: {errors[-1]}"
        ) from errors[-1]

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)

    async def checked_addresses(
        self, host: str, port: int, timeout: float | None = None
    ) -> list[url_safety.Address]:
        """Resolve ``host`` once and return its addresses, all of them allowed.

        IP literals, in every form ``url_safety.parse_literal`` accepts, are
        checked without a resolver call. Raises BlockedAddressError when any
        address is blocked, httpcore.ConnectError when resolution fails, and
        httpcore.ConnectTimeout when it takes longer than ``timeout`` seconds.
        """
        reason = url_safety.blocked_host_reason(host, self._allowed)
        if reason:
            message = f"callback host {host} is blocked: {reason}"
            raise BlockedAddressError(host, reason, message)
        literal = url_safety.parse_literal(host.rstrip(".").lower())
        if literal is not None:
            return [literal]

        addresses = [
            _parse_resolved(host, text)
            for text in dict.fromkeys(await self._resolve(host, port, timeout))
        ]
        for address in addresses:
            reason = url_safety.blocked_address_reason(address, self._allowed)
            if reason:
                message = (
                    f"callback host {host} resolves to a blocked address: {reason}"
                )
                raise BlockedAddressError(host, reason, message)
        if not addresses:
            raise httpcore.ConnectError(
                f"callback host {host} resolved to no addresses"
            )
        return addresses

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        try:
            with anyio.fail_after(timeout):
                return await self._resolver(host, port)
        except TimeoutError as exc:
            # Caught before OSError, its base class.
            message = f"resolving callback host {host} timed out"
            raise httpcore.ConnectTimeout(message) from exc
        except OSError as exc:
            message = f"failed to resolve callback host {host}: {exc}"
            raise httpcore.ConnectError(message) from exc


class SafeTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections go only to checked addresses.

    It maps httpx requests and responses to an httpcore connection pool that
    uses CheckedNetworkBackend. It has no proxy support, so a client built on
    it must pass ``trust_env=False``. Otherwise httpx mounts its own transports
    for proxy environment variables, and those skip the checks.
    """

    def __init__(
        self,
        allowed: Iterable[url_safety.Network] = (),
        *,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | None = None,
        limits: httpx.Limits | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        """Create the pool.

        ``verify`` defaults to httpx's context with the certifi CA bundle.
        ``network_backend`` opens TCP connections to the checked addresses and
        defaults to ``httpcore.AnyIOBackend``.
        """
        if verify is None:
            verify = httpx.create_ssl_context(trust_env=False)
        if limits is None:
            limits = httpx.Limits()
        backend = CheckedNetworkBackend(
            allowed, resolver=resolver, network_backend=network_backend
        )
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("SafeTransport needs a request with an async body stream")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors(request):
            core_response = await self._pool.handle_async_request(core_request)

        if not isinstance(core_response.stream, AsyncIterable):
            raise TypeError("httpcore returned a response without an async stream")
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream, request),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def build_safe_client(
    timeout_s: float,
    allowed: Sequence[url_safety.Network],
    resolver: Resolver | None = None,
    max_connections: int = 200,
    verify: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """Return an httpx client for webhook delivery that uses SafeTransport.

    ``allowed`` lists the networks that may be called although they are not
    public. ``resolver`` replaces the system resolver, for tests.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
    )
    transport = SafeTransport(allowed, resolver=resolver, verify=verify, limits=limits)
    # trust_env=False also keeps proxy variables from rerouting webhooks.
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,
    )


class _ResponseStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream, with httpx exceptions."""

    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        # Closing the pool's stream returns the connection to the pool.
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _httpx_errors(self._request):
                await close()


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise httpcore exceptions as the matching httpx exceptions."""
    try:
        yield
    except _HTTPCORE_ERRORS as exc:
        httpx_error = next(
            _HTTPX_ERRORS[cls] for cls in type(exc).__mro__ if cls in _HTTPX_ERRORS
        )
        raise httpx_error(str(exc), request=request) from exc


def _parse_resolved(host: str, text: str) -> url_safety.Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        # A resolver that returns something else fails closed.
        reason = f"{text!r} is not an IP address"
        message = f"callback host {host} resolves to an invalid address: {reason}"
        raise BlockedAddressError(host, reason, message) from exc


def _seconds_left(deadline: float | None, host: str) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ConnectTimeout(f"connecting to callback host {host} timed out")
    return left
