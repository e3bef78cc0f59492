"""Typed errors of signing and verification.

::

    SigningError
    ├── KeyFileError         a key file is missing, malformed, of an unsupported type, or would be overwritten
    └── VerificationError    never retried: the bundle or envelope must not be trusted
        ├── FormatError      malformed JSON, wrong media or payload type
        ├── SignatureError   no valid signature from enough distinct pinned keys
        ├── ManifestError    inconsistent statement (ROOT, policy, weak algorithm, file lists, non-canonical)
        ├── ContentError     a file's bytes do not match its signed digest or size
        ├── MemberError      an archive member is unsigned, duplicated, missing, irregular, or badly named
        └── PolicyError      validly signed but not acceptable here (hardware, release floor, runtime)

Messages name the file or field, what was found and what was expected.
"""

from __future__ import annotations

__all__ = [
    "ContentError",
    "FormatError",
    "KeyFileError",
    "ManifestError",
    "MemberError",
    "PolicyError",
    "SignatureError",
    "SigningError",
    "VerificationError",
]


class SigningError(Exception):
    """Base class of every error the signing package raises on purpose."""


class KeyFileError(SigningError):
    """A key file is missing, malformed, of an unsupported type, or would be overwritten."""


class VerificationError(SigningError):
    """The bundle or envelope must not be trusted (never retried)."""


class FormatError(VerificationError):
    """Malformed or non-canonical JSON, or an unexpected media type or payload type."""


class SignatureError(VerificationError):
    """No valid signature from enough distinct pinned keys."""


class ManifestError(VerificationError):
    """The signed statement is inconsistent with itself or with edgekit's signing policy."""


class ContentError(VerificationError):
    """A file's bytes do not match its signed digest or size."""


class MemberError(VerificationError):
    """An archive member is unsigned, duplicated, missing, not a regular file, or badly named."""


class PolicyError(VerificationError):
    """Validly signed, but not acceptable on this device (hardware id, release counter floor, runtime).

    `reason` is a stable code for telemetry: `rollback` (below the release floor), `hardware` (built for
    other hardware) or `policy` (anything else).
    """

    def __init__(self, message: str, reason: str = "policy") -> None:
        super().__init__(message)
        self.reason = reason
