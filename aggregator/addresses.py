"""Which IP addresses a feed may live on: the fetcher's address policy (SSRF guard).

A deny list, written from the IANA IPv4 and IPv6 Special-Purpose Address Registries
(https://www.iana.org/assignments/iana-ipv4-special-registry,
https://www.iana.org/assignments/iana-ipv6-special-registry; every entry as of 2025-04, the
newest being 100:0:0:1::/64, RFC 9780), plus multicast. Every entry is denied, even those the
registry calls globally reachable: a feed never lives on an AS112 server, an AMT relay or an
anycast protocol helper. IPv6 outside 2000::/3 (global unicast) is denied whole, except the forms
that carry an IPv4 address, which are judged by that address. ``ipaddress.is_global`` is not
used: it lets 6to4, NAT64 and site-local addresses that reach private IPv4 space through.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

__all__ = ["DENIED_IPV4", "DENIED_IPV6", "embedded_ipv4", "is_public_address"]

# (range, why) — the registry's entries, then what it does not list.
DENIED_IPV4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(network), why)
    for network, why in (
        ("0.0.0.0/8", "this network (RFC 791)"),
        ("10.0.0.0/8", "private use (RFC 1918)"),
        ("100.64.0.0/10", "shared address space, carrier-grade NAT (RFC 6598)"),
        ("127.0.0.0/8", "loopback (RFC 1122)"),
        ("169.254.0.0/16", "link local, cloud metadata (RFC 3927)"),
        ("172.16.0.0/12", "private use (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments: DS-Lite, PCP, TURN, NAT64 discovery (RFC 6890)"),
        ("192.0.2.0/24", "documentation, TEST-NET-1 (RFC 5737)"),
        ("192.31.196.0/24", "AS112-v4 (RFC 7535)"),
        ("192.52.193.0/24", "AMT relays (RFC 7450)"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast (RFC 7526)"),
        ("192.168.0.0/16", "private use (RFC 1918)"),
        ("192.175.48.0/24", "direct delegation AS112 service (RFC 7534)"),
        ("198.18.0.0/15", "benchmarking (RFC 2544)"),
        ("198.51.100.0/24", "documentation, TEST-NET-2 (RFC 5737)"),
        ("203.0.113.0/24", "documentation, TEST-NET-3 (RFC 5737)"),
        ("224.0.0.0/4", "multicast (RFC 5771; not in the special-purpose registry)"),
        ("240.0.0.0/4", "reserved (RFC 1112), limited broadcast 255.255.255.255 (RFC 919)"),
    )
)

# Denied inside 2000::/3; everything outside it is denied anyway (see is_public_address), and
# is listed here all the same so the table is the registry's, whole.
DENIED_IPV6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(network), why)
    for network, why in (
        ("::/128", "unspecified (RFC 4291)"),
        ("::1/128", "loopback (RFC 4291)"),
        # Not registry entries: deprecated or obsolete forms that carry an IPv4 address. They are
        # denied, not judged by that address: no server has one, and stacks disagree on them.
        ("::/96", "IPv4-compatible, deprecated (RFC 4291)"),
        ("::ffff:0:0:0/96", "IPv4-translated, obsolete (RFC 2765)"),
        ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation (RFC 8215)"),
        ("100::/64", "discard only (RFC 6666)"),
        ("100:0:0:1::/64", "dummy prefix (RFC 9780)"),
        # Teredo (2001::/32) is denied with the rest of this block, not judged by the two IPv4
        # addresses it carries: it gives NAT'd clients IPv6, no feed server is reached through it.
        ("2001::/23", "IETF protocol assignments: Teredo, benchmarking, ORCHID, AMT, AS112 (RFC 2928)"),
        ("2001:db8::/32", "documentation (RFC 3849)"),
        ("2620:4f:8000::/48", "direct delegation AS112 service (RFC 7534)"),
        ("3fff::/20", "documentation (RFC 9637)"),
        ("5f00::/16", "segment routing SIDs (RFC 9602)"),
        ("fc00::/7", "unique local (RFC 4193)"),
        ("fe80::/10", "link-local unicast (RFC 4291)"),
        ("fec0::/10", "site-local, deprecated (RFC 3879; no longer in the registry)"),
        ("ff00::/8", "multicast (RFC 4291; not in the special-purpose registry)"),
    )
)

_GLOBAL_UNICAST = IPv6Network("2000::/3")
# Forms that carry an IPv4 address, judged by that address (the registry's entries for them):
_MAPPED = IPv6Network("::ffff:0:0/96")  # IPv4-mapped (RFC 4291): the last 32 bits
_NAT64 = IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052): the last 32 bits
_SIX_TO_FOUR = IPv6Network("2002::/16")  # 6to4 (RFC 3056): bits 16-47

# Ranges as (first, last) integers, checked in this order: the whole check is a few integer
# comparisons, not an ipaddress membership test per range.
_IPV4_SPANS = tuple((int(n.network_address), int(n.broadcast_address)) for n, _ in DENIED_IPV4)
_IPV6_SPANS = tuple((int(n.network_address), int(n.broadcast_address)) for n, _ in DENIED_IPV6)
_GLOBAL_FIRST, _GLOBAL_LAST = int(_GLOBAL_UNICAST.network_address), int(_GLOBAL_UNICAST.broadcast_address)


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """Return the IPv4 address an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 address carries."""
    if address in _MAPPED or address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """Return True when ``address`` (an IP address as text) is one a feed may live on.

    Unparseable text is not public, nor is any address with a zone id (``fe80::1%eth0``): a
    zone names a link, and only link- or site-scoped addresses have one.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, IPv6Address):
        if ip.scope_id is not None:
            return False
        carried = embedded_ipv4(ip)
        if carried is None:
            value = int(ip)
            if not _GLOBAL_FIRST <= value <= _GLOBAL_LAST:
                return False
            return not any(first <= value <= last for first, last in _IPV6_SPANS)
        ip = carried
    value = int(ip)
    return not any(first <= value <= last for first, last in _IPV4_SPANS)
