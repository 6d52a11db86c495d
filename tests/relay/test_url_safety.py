"""Tests of the SSRF rules for callback hosts.

Every address here is only a string passed to the checks, so nothing resolves or
connects to it.
"""

from __future__ import annotations

import ipaddress

import pytest

from relay.url_safety import (
    METADATA_ADDRESSES,
    blocked_address_reason,
    blocked_host_reason,
    embedded_ipv4,
    parse_literal,
)


def networks(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(text) for text in texts)


# parse_literal


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.2", "10.1.0.2"),
        ("0", "0.0.0.0"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ],
)
def test_parse_literal_normalizes_forms(host: str, expected: str) -> None:
    assert parse_literal(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "host",
    ["hooks.example.com", "", "a..b", "256.1.1.1", "1.2.3.4.5", "08.0.0.1", "0x"],
)
def test_parse_literal_rejects_names(host: str) -> None:
    assert parse_literal(host) is None


# embedded_ipv4


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("::ffff:127.0.0.1", "127.0.0.1", id="ipv4-mapped"),
        pytest.param("2002:7f00:1::", "127.0.0.1", id="6to4"),
        pytest.param("2002:a9fe:a9fe::1", "169.254.169.254", id="6to4-metadata"),
        pytest.param("64:ff9b::7f00:1", "127.0.0.1", id="nat64"),
        pytest.param("64:ff9b::10.0.0.1", "10.0.0.1", id="nat64-dotted"),
        pytest.param("::127.0.0.1", "127.0.0.1", id="ipv4-compatible"),
    ],
)
def test_embedded_ipv4_finds_inner(address: str, expected: str) -> None:
    inner = embedded_ipv4(ipaddress.ip_address(address))

    assert inner == ipaddress.ip_address(expected)


@pytest.mark.parametrize("address", ["::", "::1", "2001:4860::8888", "127.0.0.1"])
def test_embedded_ipv4_none_for_plain(address: str) -> None:
    assert embedded_ipv4(ipaddress.ip_address(address)) is None


# blocked_host_reason with an empty allow-list


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="loopback"),
        pytest.param("127.255.255.254", id="loopback-end"),
        pytest.param("2130706433", id="decimal"),
        pytest.param("0177.0.0.1", id="octal"),
        pytest.param("0x7f.0.0.1", id="hex-dotted"),
        pytest.param("0x7f000001", id="hex"),
        pytest.param("127.1", id="short"),
        pytest.param("127.0.0.1.", id="trailing-dot"),
        pytest.param("::1", id="ipv6-loopback"),
        pytest.param("[::1]", id="bracketed"),
        pytest.param("::ffff:127.0.0.1", id="ipv4-mapped"),
        pytest.param("::ffff:7f00:1", id="ipv4-mapped-hex"),
        pytest.param("::127.0.0.1", id="ipv4-compatible"),
        pytest.param("2002:7f00:1::", id="6to4"),
        pytest.param("2002:a00:1::", id="6to4-private"),
        pytest.param("64:ff9b::7f00:1", id="nat64"),
        pytest.param("10.0.0.1", id="rfc1918-10"),
        pytest.param("172.16.0.1", id="rfc1918-172"),
        pytest.param("192.168.1.1", id="rfc1918-192"),
        pytest.param("100.64.0.1", id="cgnat-start"),
        pytest.param("100.127.255.254", id="cgnat-end"),
        pytest.param("224.0.0.1", id="multicast"),
        pytest.param("239.255.255.250", id="multicast-ssdp"),
        pytest.param("ff02::1", id="ipv6-multicast"),
        pytest.param("ff0e::1", id="ipv6-global-multicast"),
        pytest.param("255.255.255.255", id="broadcast"),
        pytest.param("0.0.0.0", id="unspecified"),
        pytest.param("0", id="zero"),
        pytest.param("::", id="ipv6-unspecified"),
        pytest.param("192.0.2.1", id="doc-192"),
        pytest.param("198.51.100.7", id="doc-198"),
        pytest.param("203.0.113.9", id="doc-203"),
        pytest.param("2001:db8::1", id="ipv6-doc"),
        pytest.param("198.18.0.1", id="benchmark"),
        pytest.param("240.0.0.1", id="reserved"),
        pytest.param("fc00::1", id="ula-fc"),
        pytest.param("fd12:3456::1", id="ula-fd"),
        pytest.param("fe80::1", id="link-local"),
        pytest.param("febf::1", id="link-local-end"),
        pytest.param("fe80::1%eth0", id="link-local-zone"),
        pytest.param("169.254.1.1", id="ipv4-link-local"),
        pytest.param("localhost", id="localhost"),
        pytest.param("LOCALHOST.", id="localhost-dot"),
        pytest.param("localhost.localdomain", id="localdomain"),
        pytest.param("api.localhost", id="sub-localhost"),
    ],
)
def test_blocked_host_rejects_non_public(host: str) -> None:
    reason = blocked_host_reason(host)

    assert reason is not None
    assert "not a public address" in reason


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "169.254.170.2",
        "100.100.100.200",
        "fd00:ec2::254",
        "2852039166",
        "0xa9.0xfe.0xa9.0xfe",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_blocked_host_names_metadata(host: str) -> None:
    reason = blocked_host_reason(host)

    assert reason is not None
    assert "cloud metadata address" in reason


def test_blocked_host_reason_names_inner() -> None:
    reason = blocked_host_reason("::ffff:127.0.0.1")

    assert reason == "::ffff:7f00:1 embeds 127.0.0.1 is not a public address"


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        "1.1.1.1",
        "134744072",
        "0x08080808",
        "8.8.8.8.",
        "2001:4860:4860::8888",
        "[2001:4860:4860::8888]",
        "2002:808:808::1",
        "hooks.example.com",
        "localhost.example.com",
        "mylocalhost",
    ],
)
def test_blocked_host_passes_public(host: str) -> None:
    assert blocked_host_reason(host) is None


# blocked_host_reason with an allow-list


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", ("127.0.0.0/8",)),
        ("2130706433", ("127.0.0.0/8",)),
        ("localhost", ("127.0.0.1/32",)),
        ("::1", ("::1/128",)),
        ("10.1.2.3", ("10.0.0.0/8", "::1/128")),
        ("169.254.1.1", ("169.254.0.0/16",)),
        ("169.254.169.254", ("169.254.169.254/32",)),
        ("fd00:ec2::254", ("fd00:ec2::254/128",)),
    ],
)
def test_allow_list_admits_listed(host: str, allowed: tuple[str, ...]) -> None:
    assert blocked_host_reason(host, networks(*allowed)) is None


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("169.254.169.254", ("169.254.0.0/16",)),
        ("169.254.169.254", ("0.0.0.0/0",)),
        ("169.254.170.2", ("169.254.170.0/24",)),
        ("100.100.100.200", ("100.64.0.0/10",)),
        ("fd00:ec2::254", ("fd00::/8",)),
        ("::ffff:169.254.169.254", ("0.0.0.0/0",)),
        ("2002:a9fe:a9fe::", ("0.0.0.0/0",)),
    ],
)
def test_allow_list_keeps_metadata_blocked(host: str, allowed: tuple[str, ...]) -> None:
    reason = blocked_host_reason(host, networks(*allowed))

    assert reason is not None
    assert "cloud metadata address" in reason


def test_broad_ipv6_allow_keeps_mapped_metadata_blocked() -> None:
    reason = blocked_host_reason("::ffff:169.254.169.254", networks("::/0"))

    assert reason is not None


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", ("::1/128",)),
        ("::1", ("127.0.0.0/8",)),
        ("10.0.2.1", ("10.0.0.0/24", "192.168.0.0/16")),
        ("10.0.1.1", ("10.0.0.0/24",)),
    ],
)
def test_allow_list_blocks_others(host: str, allowed: tuple[str, ...]) -> None:
    assert blocked_host_reason(host, networks(*allowed)) is not None


def test_metadata_addresses_listed() -> None:
    expected = {"169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"}

    assert {str(address) for address in METADATA_ADDRESSES} == expected


def test_blocked_address_reason_accepts_iterator() -> None:
    allowed = iter(networks("10.0.0.0/8"))

    reason = blocked_address_reason(ipaddress.ip_address("10.0.0.1"), allowed)

    assert reason is None


def test_mapped_address_follows_its_ipv4_allowance() -> None:
    assert blocked_host_reason("::ffff:127.0.0.1", networks("127.0.0.0/8")) is None
    assert blocked_host_reason("::ffff:10.0.0.1", networks("127.0.0.0/8")) is not None


@pytest.mark.parametrize("host", ["192.0.0.8", "192.0.0.9", "192.0.0.255"])
def test_ietf_protocol_block_is_rejected(host: str) -> None:
    assert blocked_host_reason(host) == f"{host} is not a public address"
