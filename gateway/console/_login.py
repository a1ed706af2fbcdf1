"""Log-in: a request token from the region's identity service, verified here, kept server-side.

A citizen's token is the portal agency's with the `applicant` claim; a staff member's is the
oversight agency's (its operator is the staff member), without one. Either is bound (`cnf`
x5t#S256) to the certificate the console calls the gateway with, so the console can present
it; the gateway verifies it again on every call. A session lives no longer than its token.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gateway._errors import GatewayError
from gateway.console._config import ConsoleConfig
from gateway.tokens import TOKEN_EXPIRED, TokenClaims, TokenError, TokenVerifier
from registry import Registry, RegistryError, SnapshotVerifier, load_trusted_root

__all__ = ["LoginRefused", "Logins", "Role", "Session", "Sessions"]

MAX_SESSIONS = 10_000  # sessions kept at once; the oldest go first beyond it


class Role(enum.Enum):
    CITIZEN = "citizen"
    STAFF = "staff"


class LoginRefused(GatewayError):
    """A token that does not log anyone in: `status` 401 (no or bad token) or 403 (a good
    token that is not a console log-in); `message_key` names the page's text."""

    def __init__(self, status: int, message_key: str) -> None:
        super().__init__(message_key)
        self.status = status
        self.message_key = message_key


@dataclass(frozen=True)
class Session:
    session_id: str
    csrf: str
    token: str
    role: Role
    claims: TokenClaims

    @property
    def expires_at(self) -> datetime:
        return self.claims.expires_at

    @property
    def who(self) -> str:
        """The applicant (citizen) or the operator (staff): shown on their own pages only."""
        return self.claims.applicant if self.role is Role.CITIZEN else self.claims.operator


class RegistryFile:
    """The registry snapshot file, verified against the trusted root, read again when it
    changes (the gateway's `publish` rewrites it)."""

    def __init__(self, config: ConsoleConfig, clock: Callable[[], datetime]) -> None:
        self._path = config.snapshot_file
        self._verifier = SnapshotVerifier(load_trusted_root(config.trusted_root))
        self._clock = clock
        self._seen: tuple[int, int] | None = None
        self._registry: Registry | None = None

    def current(self) -> Registry:
        try:
            stat = self._path.stat()
            seen = (stat.st_mtime_ns, stat.st_size)
            if seen != self._seen or self._registry is None:
                data = self._path.read_bytes()
                held = self._registry.version if self._registry is not None else None
                verified = self._verifier.verify(data, held_version=None, now=self._clock())
                if held is None or verified.registry.version >= held:
                    self._registry = verified.registry
                self._seen = seen
        except (OSError, RegistryError):
            if self._registry is None:
                raise
        assert self._registry is not None
        return self._registry


class Logins:
    """Turns a pasted token into a session, or refuses it."""

    def __init__(
        self, config: ConsoleConfig, registry: RegistryFile, clock: Callable[[], datetime]
    ) -> None:
        self._config = config
        self._registry = registry
        self._verifier = TokenVerifier(region=config.region, clock=clock)

    def verify(self, token: str) -> tuple[Role, TokenClaims]:
        token = token.strip().removeprefix("Bearer ").strip()
        if not token:
            raise LoginRefused(401, "login_missing")
        registry = self._registry.current()
        last: TokenError | None = None
        for role, identity in (
            (Role.CITIZEN, self._config.portal),
            (Role.STAFF, self._config.oversight),
        ):
            try:
                claims = self._verifier.verify(
                    token,
                    registry=registry,
                    caller_agency=identity.agency,
                    caller_region=self._config.region,
                    client_thumbprint=identity.thumbprint,
                )
            except TokenError as exc:
                last = exc if last is None or exc.reason == TOKEN_EXPIRED else last
                continue
            if (role is Role.CITIZEN) != bool(claims.applicant):
                raise LoginRefused(403, "login_wrong_kind")
            return role, claims
        assert last is not None
        raise LoginRefused(401, "login_expired" if last.reason == TOKEN_EXPIRED else "login_bad")


class Sessions:
    """Sessions in this process's memory, each ending with its token."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def open(self, token: str, role: Role, claims: TokenClaims) -> Session:
        self._sweep()
        while len(self._by_id) >= MAX_SESSIONS:
            self._by_id.pop(next(iter(self._by_id)))
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), token, role, claims)
        self._by_id[session.session_id] = session
        return session

    def find(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id or "")
        if session is None:
            return None
        if self._clock() >= session.expires_at:
            self._by_id.pop(session.session_id, None)
            return None
        return session

    def close(self, session_id: str | None) -> None:
        self._by_id.pop(session_id or "", None)

    def _sweep(self) -> None:
        now = self._clock()
        for gone in [k for k, s in self._by_id.items() if now >= s.expires_at]:
            del self._by_id[gone]
