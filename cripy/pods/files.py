"""The files a pod's containers share: /etc/hostname, /etc/resolv.conf, /etc/hosts (pure text builders)."""

from __future__ import annotations

from pathlib import Path

from cripy.containers.model import DNSConfig
from cripy.errors import InvalidArgument

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
# glibc reads at most 3 nameservers and ignores the rest: refuse them rather than write what will not be used.
MAX_NAMESERVERS = 3
# kubelet's own limit on search domains (glibc 2.26+ reads any number).
MAX_SEARCH_DOMAINS = 32


def resolv_conf(dns: DNSConfig, host_text: str) -> str:
    """The pod's resolv.conf: from its DNSConfig when it sets anything, else the host's."""
    if not (dns.servers or dns.searches or dns.options):
        return host_text
    if len(dns.servers) > MAX_NAMESERVERS:
        raise InvalidArgument(f"DNS config has {len(dns.servers)} nameservers; at most {MAX_NAMESERVERS} are used")
    if len(dns.searches) > MAX_SEARCH_DOMAINS:
        raise InvalidArgument(f"DNS config has {len(dns.searches)} search domains; at most {MAX_SEARCH_DOMAINS}")
    for value in (*dns.servers, *dns.searches, *dns.options):
        if not value or any(c.isspace() for c in value):
            raise InvalidArgument(f"DNS config value {value!r} is empty or contains white space")
    lines = [f"nameserver {server}" for server in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts(hostname: str, ips: list[str]) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    lines += [f"{ip}\t{hostname}" for ip in ips]
    return "\n".join(lines) + "\n"


def hostname_file(hostname: str) -> str:
    return hostname + "\n"
