"""Why a signature or a requirement was refused: a small fixed vocabulary, so that every refusal names its kind
the same way in pull errors, logs and `cripy image trust`."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    NO_SIGNATURE = "no signature found"
    OTHER_KEY = "signed by another key"
    OTHER_KEY_OR_ALTERED = "signed by another key, or altered"
    BAD_SIGNATURE = "bad signature"
    MANIFEST_MISMATCH = "signature is for another manifest"
    IDENTITY_MISMATCH = "identity mismatch"
    UNTRUSTED_CERTIFICATE = "untrusted certificate"
    TRUST_MATERIAL = "unusable trust material"
    REJECTED = "rejected by the policy"
    UNAVAILABLE = "signatures could not be fetched"


class Refused(Exception):
    """One signature (or a whole requirement) did not pass, for `reason`, explained by `detail`."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
