"""The sans-IO pieces of the distribution protocol (cripy.images.distribution): WWW-Authenticate parsing, error
bodies, response headers, the throughput monitor, TLS files."""

import json
from pathlib import Path

import pytest

from cripy.errors import DeadlineExceeded, InvalidArgument
from cripy.images.auth import Credentials
from cripy.images.distribution import (
    MAX_RETRY_AFTER,
    Challenge,
    ThroughputMonitor,
    basic_auth_header,
    build_ssl_context,
    content_range_start,
    parse_www_authenticate,
    pick_challenge,
    registry_error_codes,
    registry_error_text,
    retry_after_seconds,
)


def test_bearer_challenge_like_docker_hub():
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )
    assert parse_www_authenticate(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        )
    ]


def test_quoted_values_with_commas_and_escaped_quotes():
    header = r'Bearer realm="https://a/token", scope="repository:a/b:pull,push", error="say \"hi\", ok"'
    [c] = parse_www_authenticate(header)
    assert c.params["scope"] == "repository:a/b:pull,push"
    assert c.params["error"] == 'say "hi", ok'
    assert c.params["realm"] == "https://a/token"


def test_several_challenges_in_one_header_and_across_headers():
    header = 'Basic realm="Registry Realm", Bearer realm="https://t/x",service=reg'
    challenges = parse_www_authenticate([header, 'Negotiate, Digest realm="d", qop="auth,auth-int"'])
    assert [c.scheme for c in challenges] == ["basic", "bearer", "negotiate", "digest"]
    assert challenges[0].params == {"realm": "Registry Realm"}
    assert challenges[1].params == {"realm": "https://t/x", "service": "reg"}
    assert challenges[3].params == {"realm": "d", "qop": "auth,auth-int"}


def test_scheme_and_param_names_are_case_insensitive_and_spaces_tolerated():
    [c] = parse_www_authenticate('BEARER  Realm = "https://t" ,  Service=svc ')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://t", "service": "svc"}


def test_unquoted_url_values_and_garbage_are_tolerated():
    [c] = parse_www_authenticate("Bearer realm=https://auth.example/token?x=1,service=example")
    assert c.params == {"realm": "https://auth.example/token?x=1", "service": "example"}
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate('realm="orphan"') == []
    [c] = parse_www_authenticate('Basic realm="unterminated')
    assert c.params == {"realm": "unterminated"}


def test_pick_challenge_prefers_bearer():
    challenges = parse_www_authenticate('Basic realm="r", Bearer realm="https://t"')
    assert pick_challenge(challenges).scheme == "bearer"
    assert pick_challenge(parse_www_authenticate('Basic realm="r"')).scheme == "basic"
    assert pick_challenge(parse_www_authenticate("Negotiate")) is None


def test_registry_error_text_and_codes():
    body = json.dumps(
        {
            "errors": [
                {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": "nope"}},
                {"code": "NAME_UNKNOWN", "message": "repository name not known to registry"},
            ]
        }
    ).encode()
    assert registry_error_codes(body) == ["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]
    text = registry_error_text(body)
    assert text.startswith('MANIFEST_UNKNOWN: manifest unknown ({"Tag": "nope"})')
    assert "NAME_UNKNOWN: repository name not known to registry" in text


def test_registry_error_text_other_shapes():
    assert registry_error_text(b'{"details":"incorrect username or password"}') == "incorrect username or password"
    assert registry_error_text(b'{"error":"invalid_grant","error_description":"bad token"}') == "bad token"
    assert registry_error_text(b"<html>\n  Bad   Gateway\n</html>") == "<html> Bad Gateway </html>"
    assert registry_error_text(b"") == "no details in the response body"
    assert registry_error_codes(b"not json") == []


def testbasic_auth_header():
    assert basic_auth_header(None) is None
    assert basic_auth_header(Credentials()) is None
    assert basic_auth_header(Credentials(username="u", password="p")) == "Basic dTpw"
    # identity tokens double as the password where a registry only speaks Basic
    assert basic_auth_header(Credentials(username="u", identity_token="p")) == "Basic dTpw"


def test_content_range_start():
    assert content_range_start("bytes 100-199/200") == 100
    assert content_range_start("bytes 0-0/*") == 0
    assert content_range_start("bytes */200") is None  # the form of a 416 answer, not of a part
    assert content_range_start("items 1-2/3") is None
    assert content_range_start("") is None


def test_retry_after_seconds_only_and_capped():
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"Retry-After": "100000"}) == MAX_RETRY_AFTER
    assert retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after_seconds({}) is None


def monitor(floor: int = 100, window: float = 10.0) -> ThroughputMonitor:
    return ThroughputMonitor(floor, window, "pull of layer sha256:x from r/a", start=0.0)


def test_monitor_tolerates_slow_start_within_first_window():
    mon = monitor()
    mon.feed(0, 5.0)
    mon.feed(10, 9.9)  # far under the floor, but no full window has passed yet


def test_monitor_passes_at_floor_rate():
    mon = monitor()
    for t in range(1, 100):
        mon.feed(100, float(t))


def test_monitor_raises_when_window_under_floor():
    mon = monitor(floor=100, window=10.0)
    mon.feed(5000, 1.0)  # a burst early on
    mon.feed(100, 10.5)  # window (0.5, 10.5] still holds the burst
    with pytest.raises(DeadlineExceeded) as exc:
        mon.feed(100, 12.0)  # window (2, 12] holds only 200 B = 20 B/s
    assert str(exc.value) == (
        "pull of layer sha256:x from r/a stalled: 20 B/s over the last 10s, under the floor of 100 B/s"
    )


def test_monitor_catches_a_complete_stall():
    mon = monitor()
    mon.feed(100_000, 1.0)
    with pytest.raises(DeadlineExceeded, match="stalled: 0 B/s"):
        mon.feed(0, 11.5)


def test_monitor_rejects_nonsense_settings():
    with pytest.raises(InvalidArgument):
        ThroughputMonitor(0, 10.0, "x", 0.0)
    with pytest.raises(InvalidArgument):
        ThroughputMonitor(10, 0.0, "x", 0.0)


def test_ssl_context_without_certs_dir(tmp_path: Path):
    ctx = build_ssl_context("reg:5000", tmp_path / "missing", verify=True)
    assert ctx.check_hostname
    insecure = build_ssl_context("reg:5000", None, verify=False)
    assert not insecure.check_hostname


def test_ssl_context_reports_bad_cert_files(tmp_path: Path):
    d = tmp_path / "reg:5000"
    d.mkdir()
    (d / "ca.crt").write_text("not a certificate")
    with pytest.raises(InvalidArgument, match="ca.crt"):
        build_ssl_context("reg:5000", tmp_path, verify=True)
    (d / "ca.crt").unlink()
    (d / "client.cert").write_text("x")
    with pytest.raises(InvalidArgument, match="client.key"):
        build_ssl_context("reg:5000", tmp_path, verify=True)


def test_ssl_context_loads_ca_and_client_pair(tmp_path: Path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reg")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    d = tmp_path / "reg:5000"
    d.mkdir()
    (d / "ca.crt").write_bytes(pem)
    (d / "client.cert").write_bytes(pem)
    (d / "client.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = build_ssl_context("reg:5000", tmp_path, verify=True)
    assert any(c["subject"] == ((("commonName", "reg"),),) for c in ctx.get_ca_certs())
