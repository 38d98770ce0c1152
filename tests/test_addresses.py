"""The address policy: every special-purpose range of the IANA registries is refused, the
forms that carry an IPv4 address are judged by it, and the fetcher connects to none of them."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from aggregator.addresses import DENIED_IPV4, DENIED_IPV6, is_public_address
from aggregator.config import FetchSettings
from aggregator.errors import FetchError
from aggregator.fetcher import Fetcher

from .socket_audit import connections

# One address inside every range (the registries' rows, in their order), then what they do not
# list. Written by hand from the registries, not from the module's table.
DENIED = [
    # IPv4 Special-Purpose Address Registry
    ("0.0.0.0", "this host on this network"),
    ("0.255.255.255", "this network, last"),
    ("10.0.0.1", "private use"),
    ("10.255.255.255", "private use, last"),
    ("100.64.0.1", "shared address space (CGN)"),
    ("100.127.255.255", "shared address space, last"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback, far end"),
    ("169.254.169.254", "link local: cloud metadata"),
    ("172.16.0.1", "private use"),
    ("172.31.255.255", "private use, last"),
    ("192.0.0.1", "IPv4 service continuity prefix"),
    ("192.0.0.8", "IPv4 dummy address"),
    ("192.0.0.9", "PCP anycast"),
    ("192.0.0.10", "TURN anycast"),
    ("192.0.0.170", "NAT64/DNS64 discovery"),
    ("192.0.0.171", "NAT64/DNS64 discovery"),
    ("192.0.0.255", "IETF protocol assignments, last"),
    ("192.0.2.1", "TEST-NET-1"),
    ("192.31.196.1", "AS112-v4"),
    ("192.52.193.1", "AMT"),
    ("192.88.99.1", "deprecated 6to4 relay anycast"),
    ("192.88.99.2", "6a44 relay anycast"),
    ("192.168.1.1", "private use"),
    ("192.175.48.1", "direct delegation AS112"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking, last"),
    ("198.51.100.1", "TEST-NET-2"),
    ("203.0.113.1", "TEST-NET-3"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved, far end"),
    ("255.255.255.255", "limited broadcast"),
    # IPv4 multicast (its own registry)
    ("224.0.0.1", "multicast"),
    ("239.255.255.255", "multicast, last"),
    # IPv6 Special-Purpose Address Registry
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
    ("::ffff:0.0.0.0", "IPv4-mapped this host"),
    ("64:ff9b::7f00:1", "NAT64 of loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of metadata"),
    ("64:ff9b::a00:1", "NAT64 of private"),
    ("64:ff9b::6440:1", "NAT64 of shared address space"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("64:ff9b:1::808:808", "local-use NAT64, even of a public IPv4"),
    ("100::1", "discard only"),
    ("100:0:0:1::1", "dummy prefix"),
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo with public server and client"),
    ("2001:1::1", "PCP anycast"),
    ("2001:1::2", "TURN anycast"),
    ("2001:1::3", "DNS-SD SRP anycast"),
    ("2001:2::1", "benchmarking"),
    ("2001:3::1", "AMT"),
    ("2001:4:112::1", "AS112-v6"),
    ("2001:10::1", "deprecated ORCHID"),
    ("2001:20::1", "ORCHIDv2"),
    ("2001:30::1", "drone remote ID DETs"),
    ("2001:1ff:ffff::1", "IETF protocol assignments, far end"),
    ("2001:db8::1", "documentation"),
    ("2002:7f00:1::1", "6to4 of loopback"),
    ("2002:a9fe:a9fe::1", "6to4 of metadata"),
    ("2002:a00:1::1", "6to4 of private"),
    ("2002:c0a8:101::1", "6to4 of private"),
    ("2002::1", "6to4 of this host"),
    ("2002:e000:1::1", "6to4 of multicast"),
    ("2620:4f:8000::1", "direct delegation AS112"),
    ("3fff::1", "documentation"),
    ("3fff:fff:ffff::1", "documentation, far end"),
    ("5f00::1", "SRv6 SIDs"),
    ("fc00::1", "unique local"),
    ("fdff:ffff::1", "unique local, far end"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local with a zone id"),
    ("febf::1", "link-local, far end"),
    # Not in the IPv6 registry
    ("::127.0.0.1", "IPv4-compatible (deprecated)"),
    ("::8.8.8.8", "IPv4-compatible, even of a public IPv4"),
    ("::ffff:0:808:808", "IPv4-translated (obsolete)"),
    ("fec0::1", "site-local (deprecated)"),
    ("feff::1", "site-local, far end"),
    ("ff02::1", "multicast, link scope"),
    ("ff0e::1", "multicast, global scope"),
    ("4000::1", "outside global unicast 2000::/3"),
    ("1000::1", "outside global unicast 2000::/3"),
    ("e000::1", "outside global unicast 2000::/3"),
    ("2606:4700:4700::1111%eth0", "a global address with a zone id"),
    # Not addresses
    ("", "empty"),
    ("localhost", "a name"),
    ("0177.0.0.1", "octal IPv4"),
    ("127.1", "short IPv4"),
    ("0x7f.0.0.1", "hex IPv4"),
    ("1.2.3.4.5", "five parts"),
    ("8.8.8.8 ", "trailing space"),
    ("fe80::1%", "empty zone id"),
    ("[::1]", "brackets"),
]

PUBLIC = [
    ("8.8.8.8", "public"),
    ("1.1.1.1", "public"),
    ("93.184.215.14", "public"),
    ("9.255.255.255", "just below 10/8"),
    ("11.0.0.0", "just above 10/8"),
    ("100.63.255.255", "just below 100.64/10"),
    ("100.128.0.0", "just above 100.64/10"),
    ("126.255.255.255", "just below 127/8"),
    ("128.0.0.0", "just above 127/8"),
    ("169.253.255.255", "just below 169.254/16"),
    ("169.255.0.0", "just above 169.254/16"),
    ("172.15.255.255", "just below 172.16/12"),
    ("172.32.0.0", "just above 172.16/12"),
    ("191.255.255.255", "just below 192.0.0/24"),
    ("192.0.1.0", "between 192.0.0/24 and 192.0.2/24"),
    ("192.0.3.0", "just above 192.0.2/24"),
    ("192.31.195.255", "just below AS112-v4"),
    ("192.52.194.0", "just above AMT"),
    ("192.88.98.255", "just below the 6to4 relays"),
    ("192.88.100.0", "just above the 6to4 relays"),
    ("192.167.255.255", "just below 192.168/16"),
    ("192.169.0.0", "just above 192.168/16"),
    ("192.175.49.0", "just above direct delegation AS112"),
    ("198.17.255.255", "just below 198.18/15"),
    ("198.20.0.0", "just above 198.18/15"),
    ("198.51.99.255", "just below TEST-NET-2"),
    ("198.51.101.0", "just above TEST-NET-2"),
    ("203.0.112.255", "just below TEST-NET-3"),
    ("203.0.114.0", "just above TEST-NET-3"),
    ("223.255.255.255", "just below multicast"),
    ("2606:4700:4700::1111", "public"),
    ("2001:4860:4860::8888", "public"),
    ("2000::1", "start of global unicast"),
    ("2001:200::1", "just past 2001::/23"),
    ("2001:db7:ffff::1", "just below documentation"),
    ("2001:db9::1", "just above documentation"),
    ("2620:4f:7fff::1", "just below direct delegation AS112"),
    ("2620:4f:8001::1", "just above direct delegation AS112"),
    ("3fff:1000::1", "just past 3fff::/20"),
    ("::ffff:8.8.8.8", "IPv4-mapped public"),
    ("::ffff:808:808", "IPv4-mapped public, hex"),
    ("2002:808:808::1", "6to4 of a public IPv4"),
    ("64:ff9b::808:808", "NAT64 of a public IPv4"),
    ("64:ff9b::1.1.1.1", "NAT64 of a public IPv4, dotted"),
]


@pytest.mark.parametrize(
    ("address", "public"),
    [pytest.param(a, False, id=f"deny {a} {why}") for a, why in DENIED]
    + [pytest.param(a, True, id=f"allow {a} {why}") for a, why in PUBLIC],
)
def test_address_policy(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_every_denied_range_has_a_case_above() -> None:
    """The table above covers each range of the policy (and stays so as ranges are added)."""
    cases: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for address, _ in DENIED:
        try:
            cases.append(ipaddress.ip_address(address.split("%", 1)[0]))
        except ValueError:
            continue
    ranges: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [*DENIED_IPV4, *DENIED_IPV6]
    for network, why in ranges:
        assert any(case.version == network.version and case in network for case in cases), (network, why)


BEHIND_A_NAME = [
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "fec0::1",  # site-local
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use NAT64
    "::ffff:7f00:1",  # IPv4-mapped 127.0.0.1
    "::127.0.0.1",  # IPv4-compatible 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "100.64.0.1",
    "198.18.0.1",
    "192.0.0.170",
    "3fff::1",
    "5f00::1",
]


@pytest.mark.parametrize("answers", [[a] for a in BEHIND_A_NAME] + [BEHIND_A_NAME], ids=str)
def test_a_name_resolving_to_a_special_address_is_refused_before_any_connection(
    answers: list[str],
) -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers

    async def go() -> None:
        async with Fetcher(FetchSettings(allow_private_networks=False), resolver=resolver) as fetcher:
            await fetcher.fetch("http://feeds.example.test/feed")

    with connections() as attempts, pytest.raises(FetchError) as caught:
        asyncio.run(go())
    assert attempts == []  # not even tried (the audit hook refuses any off loopback)
    assert caught.value.kind == "blocked", caught.value
    assert asked == [("feeds.example.test", 80)]
    assert all(address in str(caught.value) for address in answers)
