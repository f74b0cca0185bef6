"""OpenPGP simple signing through gpgv: good, foreign, altered, expired and malformed signatures."""

import subprocess
from pathlib import Path

import pytest

from cripy.images.trust.openpgp import KeyringError, binary_keyring, verify_signed_message
from cripy.images.trust.reasons import Reason, Refused
from tests.support.signing import GpgKey

PAYLOAD = b'{"critical": {}, "optional": {}}'


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory):
    key = GpgKey(tmp_path_factory.mktemp("gpg") / "home")
    yield key
    key.close()


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory):
    key = GpgKey(tmp_path_factory.mktemp("gpg") / "home", "stranger")
    yield key
    key.close()


def refusal(message: bytes, keyrings: list[tuple[str, bytes]]) -> Refused:
    with pytest.raises(Refused) as info:
        verify_signed_message(message, keyrings)
    return info.value


def test_good_signature_gives_payload_and_fingerprint(signer: GpgKey, stranger: GpgKey) -> None:
    verified = verify_signed_message(signer.sign(PAYLOAD), [("a", stranger.public_key()), ("b", signer.public_key())])
    assert verified.payload == PAYLOAD and verified.fingerprint == signer.fingerprint


def test_armored_keyring_is_dearmored(signer: GpgKey) -> None:
    keyring = binary_keyring(signer.public_key(armor=True), "key.asc")
    assert keyring == signer.public_key()
    assert binary_keyring(b"\x99binary", "k") == b"\x99binary"
    with pytest.raises(KeyringError, match="key.asc"):
        binary_keyring(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64 at all\n", "key.asc")


def test_signature_by_a_key_not_in_the_keyring(signer: GpgKey, stranger: GpgKey) -> None:
    refused = refusal(stranger.sign(PAYLOAD), [("/etc/pki/signer.gpg", signer.public_key())])
    assert refused.reason == Reason.OTHER_KEY
    assert stranger.fingerprint[-16:] in refused.detail and "/etc/pki/signer.gpg" in refused.detail


def test_altered_payload(signer: GpgKey) -> None:
    message = signer.sign(PAYLOAD, compressed=False)
    altered = message.replace(b"critical", b"criticaL")
    assert refusal(altered, [("k", signer.public_key())]).reason == Reason.BAD_SIGNATURE


@pytest.mark.parametrize("kind", ["garbage", "literal-only", "empty"])
def test_not_a_signed_message(signer: GpgKey, kind: str) -> None:
    if kind == "garbage":
        message = b"\x00not openpgp at all"
    elif kind == "literal-only":
        message = signer.literal(PAYLOAD)
    else:
        message = b""
    assert refusal(message, [("k", signer.public_key())]).reason == Reason.BAD_SIGNATURE


def test_signature_by_an_expired_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    base = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*base, "--faked-system-time", "20200101T000000", "--quick-generate-key", "old <o@x>",
                    "ed25519", "sign", "1d"], env=env, check=True, capture_output=True)
    message = subprocess.run([*base, "--faked-system-time", "20200101T010000", "--sign"], input=PAYLOAD, env=env,
                             check=True, capture_output=True).stdout
    keyring = subprocess.run([*base, "--export"], env=env, check=True, capture_output=True).stdout
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)
    refused = refusal(message, [("k", keyring)])
    assert refused.reason == Reason.BAD_SIGNATURE and "expired" in refused.detail
