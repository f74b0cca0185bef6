"""cripy.pods.files: the text of a pod's resolv.conf, hosts and hostname files."""

from __future__ import annotations

import pytest

from cripy.containers.model import DNSConfig
from cripy.errors import InvalidArgument
from cripy.pods import files

HOST = "# host's file\nnameserver 192.0.2.53\nsearch corp.example\n"


def test_resolv_conf_from_the_pod_dns_config() -> None:
    dns = DNSConfig(
        servers=["10.96.0.10", "fd00::10"],
        searches=["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        options=["ndots:5", "edns0"],
    )
    assert files.resolv_conf(dns, HOST) == (
        "nameserver 10.96.0.10\n"
        "nameserver fd00::10\n"
        "search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5 edns0\n"
    )


@pytest.mark.parametrize(
    ("dns", "expected"),
    [
        (DNSConfig(servers=["10.0.0.1"]), "nameserver 10.0.0.1\n"),
        (DNSConfig(searches=["example.com"]), "search example.com\n"),
        (DNSConfig(options=["rotate"]), "options rotate\n"),
    ],
)
def test_resolv_conf_writes_only_what_is_set(dns: DNSConfig, expected: str) -> None:
    # Anything set means the pod's file replaces the host's entirely.
    assert files.resolv_conf(dns, HOST) == expected


def test_resolv_conf_falls_back_to_the_host_file() -> None:
    assert files.resolv_conf(DNSConfig(), HOST) == HOST
    assert files.resolv_conf(DNSConfig(), "") == ""


@pytest.mark.parametrize(
    "dns",
    [
        DNSConfig(servers=[""]),
        DNSConfig(servers=["10.0.0.1 10.0.0.2"]),
        DNSConfig(searches=["a.example", "b\nnameserver 6.6.6.6"]),  # no injecting extra lines
        DNSConfig(options=["ndots:5\toptions"]),
        DNSConfig(searches=[""]),
    ],
)
def test_resolv_conf_refuses_empty_or_white_space_values(dns: DNSConfig) -> None:
    with pytest.raises(InvalidArgument, match="DNS config value"):
        files.resolv_conf(dns, HOST)


def test_resolv_conf_search_domain_limit() -> None:
    ok = DNSConfig(searches=[f"d{i}.example" for i in range(files.MAX_SEARCH_DOMAINS)])
    assert files.resolv_conf(ok, HOST).startswith("search d0.example ")
    too_many = DNSConfig(searches=[f"d{i}.example" for i in range(files.MAX_SEARCH_DOMAINS + 1)])
    with pytest.raises(InvalidArgument, match=f"{files.MAX_SEARCH_DOMAINS + 1} search domains"):
        files.resolv_conf(too_many, HOST)


def test_resolv_conf_refuses_more_nameservers_than_the_resolver_reads() -> None:
    dns = DNSConfig(servers=["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])
    with pytest.raises(InvalidArgument, match="nameserver"):
        files.resolv_conf(dns, HOST)


def test_hosts_file() -> None:
    text = files.hosts("web-0", ["10.244.1.5", "fd00:244::5"])
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[1].split("\t")[0] == "::1" and "localhost" in lines[1].split("\t")[1].split()
    assert lines[-2:] == ["10.244.1.5\tweb-0", "fd00:244::5\tweb-0"]
    assert all("\t" in line for line in lines)


def test_hosts_file_without_ips_has_only_the_standard_entries() -> None:
    lines = files.hosts("web-0", []).splitlines()
    assert not any("web-0" in line for line in lines)
    assert {line.split("\t")[0] for line in lines} == {"127.0.0.1", "::1", "fe00::0", "fe00::1", "fe00::2"}


def test_hostname_file() -> None:
    assert files.hostname_file("web-0") == "web-0\n"
