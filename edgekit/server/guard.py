"""HTTP guards that run before any route: bearer-token checks by path, and security headers on every answer.

Authentication is an ASGI middleware rather than a FastAPI dependency because FastAPI reads and parses a
request's JSON body before it solves dependencies: an unauthenticated client would learn, from a 400, how
its body was parsed. Here a request under a guarded prefix is refused with 401 before the body is read.

Only `Authorization: Bearer <token>` is accepted (the scheme exactly, one header), and tokens are compared
as SHA-256 digests with `hmac.compare_digest`, so the comparison takes the same time whatever the length
or content of the guess.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

__all__ = ["SECURITY_HEADERS", "BearerRule", "BearerTokens", "SecurityHeaders", "bearer_matches"]

# The dashboard's scripts and styles are static files of this server; nothing inline, nothing from
# elsewhere, no framing, no forms, no <base>.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def bearer_matches(headers: Sequence[tuple[bytes, bytes]], digests: Sequence[bytes]) -> bool:
    """Whether the request carries exactly one `Authorization: Bearer <token>` whose token is one of these.

    Args:
        headers: the ASGI scope's headers (lower-case names).
        digests: SHA-256 digests of the accepted tokens.
    """
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1 or not values[0].startswith(b"Bearer "):
        return False
    supplied = _digest(values[0][len(b"Bearer ") :])
    found = False
    for digest in digests:  # no early exit: every accepted token is compared
        found |= hmac.compare_digest(supplied, digest)
    return found


@dataclass(frozen=True)
class BearerRule:
    """Requests whose path starts with `prefix` need one of `tokens` (an empty tuple: nobody gets in)."""

    prefix: str
    tokens: tuple[str, ...]
    what: str  # named in the 401 message, e.g. "admin token"

    def digests(self) -> list[bytes]:
        return [_digest(token) for token in self.tokens if token]


class BearerTokens:
    """ASGI middleware: refuse (401) a request under a guarded prefix without an accepted bearer token,
    before the app or any body reader sees it. The first matching rule applies."""

    def __init__(self, app: Any, rules: Sequence[BearerRule], on_reject: Callable[[str], None]) -> None:
        self.app = app
        self.rules = [(rule, rule.digests()) for rule in rules]
        self.on_reject = on_reject

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for rule, digests in self.rules:
                if path.startswith(rule.prefix):
                    if not bearer_matches(scope.get("headers") or [], digests):
                        self.on_reject(rule.prefix)
                        response = JSONResponse(
                            {"detail": f"{path} needs `Authorization: Bearer <{rule.what}>`"},
                            status_code=401,
                            headers={"WWW-Authenticate": "Bearer"},
                        )
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (set, replacing any the app chose)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._names = {name for name, _ in SECURITY_HEADERS}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", []) if n.lower() not in self._names]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)
