"""OpenPGP "simple signing" verification, done by GnuPG's gpgv: a signed message and trusted keyrings in, the
signed payload and the signer's fingerprint out, or a refusal that says why.

gpgv trusts exactly the keyrings it is given and nothing else (no trust database, no agent, no network), which is
the semantics of signedBy. Its machine-readable status lines (--status-fd) tell a good signature (VALIDSIG) from a
bad one (BADSIG), one by a key we do not have (NO_PUBKEY) and expired or revoked keys. The payload gpgv writes is
used only when the verification succeeded: gpgv streams it out before it knows.

Keyrings may be binary or ASCII-armored; gpgv reads only binary ones, so armored keys go through `gpg --dearmor`.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cripy.images.trust.reasons import Reason, Refused

GPGV = "gpgv"
GPG = "gpg"
TIMEOUT = 30.0
ARMOR_HEADER = b"-----BEGIN PGP"
# Status keywords after which a signature cannot be good, whatever else gpgv says.
_FAILURES = {
    "BADSIG": (Reason.BAD_SIGNATURE, "the signature does not match the signed payload (the signature file was altered)"),
    "EXPSIG": (Reason.BAD_SIGNATURE, "the signature has expired"),
    "EXPKEYSIG": (Reason.BAD_SIGNATURE, "the signing key has expired"),
    "REVKEYSIG": (Reason.BAD_SIGNATURE, "the signing key has been revoked"),
}


class KeyringError(ValueError):
    """A keyring cannot be used (not OpenPGP data, gpg missing)."""


@dataclass(frozen=True)
class Verified:
    payload: bytes
    fingerprint: str  # of the primary key that made the signature


def binary_keyring(data: bytes, what: str) -> bytes:
    """`data` as a binary keyring gpgv can read: armored keys are de-armored by gpg."""
    if not data.lstrip().startswith(ARMOR_HEADER):
        return data
    with tempfile.TemporaryDirectory(prefix="cripy-gpg-") as home:
        try:
            result = subprocess.run([GPG, "--homedir", home, "--batch", "--no-options", "--dearmor"], input=data,
                                    capture_output=True, timeout=TIMEOUT)
        except FileNotFoundError:
            raise KeyringError(f"{what}: ASCII-armored keys need {GPG} (Debian package gpg), which is not installed") from None
        except subprocess.TimeoutExpired:
            raise KeyringError(f"{what}: {GPG} --dearmor did not finish within {TIMEOUT:g}s") from None
    if result.returncode != 0 or not result.stdout:
        raise KeyringError(f"{what}: not an ASCII-armored OpenPGP key: {_last_line(result.stderr)}")
    return result.stdout


def verify_signed_message(message: bytes, keyrings: Sequence[tuple[str, bytes]]) -> Verified:
    """Verify an OpenPGP signed message against binary keyrings ((description, bytes) pairs)."""
    with tempfile.TemporaryDirectory(prefix="cripy-gpgv-") as tmp:
        directory = Path(tmp)
        home = directory / "home"
        home.mkdir(mode=0o700)
        signed = directory / "signature"
        signed.write_bytes(message)
        output = directory / "payload"
        argv = [GPGV, "--homedir", str(home), "--status-fd", "1", "--output", str(output)]
        for index, (_, keyring) in enumerate(keyrings):
            path = directory / f"keyring-{index}.gpg"
            path.write_bytes(keyring)
            argv += ["--keyring", str(path)]
        argv.append(str(signed))
        try:
            result = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise Refused(Reason.TRUST_MATERIAL, f"{GPGV} (Debian package gpgv) is not installed") from None
        except subprocess.TimeoutExpired:
            raise Refused(Reason.BAD_SIGNATURE, f"{GPGV} did not finish within {TIMEOUT:g}s") from None
        statuses = _statuses(result.stdout)
        fingerprint = _judge(statuses, result.returncode, result.stderr, [d for d, _ in keyrings])
        return Verified(output.read_bytes(), fingerprint)


def _statuses(stdout: bytes) -> list[list[str]]:
    lines = stdout.decode("utf-8", "replace").splitlines()
    return [line.split()[1:] for line in lines if line.startswith("[GNUPG:] ") and len(line.split()) > 1]


def _judge(statuses: list[list[str]], returncode: int, stderr: bytes, keyrings: list[str]) -> str:
    """The signer's fingerprint if gpgv vouches for exactly one good signature, else the refusal."""
    keywords = [s[0] for s in statuses]
    for keyword, (reason, detail) in _FAILURES.items():
        if keyword in keywords:
            raise Refused(reason, detail)
    missing = [s[1] for s in statuses if s[0] == "NO_PUBKEY" and len(s) > 1]
    if missing:
        raise Refused(Reason.OTHER_KEY, f"signed by key {missing[0]}, which is not in {', '.join(keyrings)}")
    errors = [s for s in statuses if s[0] == "ERRSIG"]
    if errors:
        raise Refused(Reason.BAD_SIGNATURE, f"the signature cannot be checked (gpgv: {_last_line(stderr)})")
    valid = [s for s in statuses if s[0] == "VALIDSIG"]
    if "NEWSIG" not in keywords or not valid:
        raise Refused(Reason.BAD_SIGNATURE, f"not an OpenPGP signed message (gpgv: {_last_line(stderr)})")
    if len(valid) != 1 or keywords.count("NEWSIG") != 1:
        raise Refused(Reason.BAD_SIGNATURE, "the message carries more than one signature")
    if returncode != 0:
        raise Refused(Reason.BAD_SIGNATURE, f"gpgv exited with {returncode}: {_last_line(stderr)}")
    # VALIDSIG <fpr> <date> <timestamp> <expire> <version> <reserved> <algo> <hash> <class> <primary-fpr>
    fields = valid[0]
    return fields[-1] if len(fields) >= 11 else fields[1]


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no diagnostics"
