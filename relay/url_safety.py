"""Rules that keep callback URLs from reaching non-public addresses (SSRF).

Only addresses that are globally routable pass, unless the operator allows a
network with ``RELAY_CALLBACK_ALLOW_CIDRS``. IPv4 literals in the forms that
``inet_aton`` accepts (``127.1``, ``0x7f.0.0.1``, ``2130706433``) are normalized
first, and IPv6 forms that embed an IPv4 address are checked as that address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints stay blocked unless an allowed network names them
# exactly, because a broad allowance such as 169.254.0.0/16 is usually a mistake.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IPv4-translated addresses (RFC 2765), written ::ffff:0:a.b.c.d.
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
# Ranges that Python's ``ipaddress`` counts as global but that no public
# receiver uses: deprecated site-local and NAT64 local-use addresses.
_EXTRA_BLOCKED = (
    ipaddress.ip_network("fec0::/10"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    # IETF protocol assignments. Some Python patch releases count parts of
    # it as global; a webhook receiver never lives there.
    ipaddress.ip_network("192.0.0.0/24"),
)
_LOCAL_NAMES = ("localhost", "localhost.localdomain")


def parse_literal(host: str) -> Address | None:
    """Return the address a host literal denotes, or None for a hostname."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or not all(part.isalnum() for part in host.split(".")):
        return None
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address carried inside an IPv6 address, if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


def blocked_address_reason(
    address: Address, allowed: Iterable[Network] = ()
) -> str | None:
    """Return why ``address`` must not be called, or None when it may be."""
    allowed = tuple(allowed)
    inner = embedded_ipv4(address)
    if inner is not None and inner in METADATA_ADDRESSES:
        # Checked before the allow-list, so a broad IPv6 allowance cannot
        # reach a metadata address through its IPv4-mapped form.
        if _is_allowed(inner, allowed):
            return None
        return f"{address} embeds {inner}, a cloud metadata address"
    if _is_allowed(address, allowed):
        return None
    if inner is not None:
        # An address that carries an IPv4 address is judged by that address,
        # so allowing 127.0.0.0/8 also allows ::ffff:127.0.0.1.
        inner_reason = blocked_address_reason(inner, allowed)
        return f"{address} embeds {inner_reason}" if inner_reason else None
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if any(address in network for network in _EXTRA_BLOCKED):
        return f"{address} is not a public address"
    if not address.is_global or address.is_multicast:
        return f"{address} is not a public address"
    return None


def is_local_name(host: str) -> bool:
    """Return whether ``host`` is a localhost name, which means loopback."""
    name = host.rstrip(".").lower()
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def blocked_host_reason(host: str, allowed: Iterable[Network] = ()) -> str | None:
    """Return why a URL host is rejected before any DNS lookup, or None."""
    name = host.rstrip(".").lower()
    if is_local_name(name):
        return blocked_address_reason(ipaddress.ip_address("127.0.0.1"), allowed)
    address = parse_literal(name)
    if address is None:
        return None
    return blocked_address_reason(address, allowed)


def _is_allowed(address: Address, allowed: tuple[Network, ...]) -> bool:
    for network in allowed:
        if address.version != network.version or address not in network:
            continue
        if address in METADATA_ADDRESSES and network.num_addresses > 1:
            continue
        return True
    return False
