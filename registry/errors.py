"""Errors raised by the registry.

Every error says, in one sentence a person can act on, what was refused and why. None of them
carries key material.

    RegistryError
    ├── SourceError                 the TOML source has problems (all of them listed)
    ├── SnapshotError               a signed snapshot was refused
    │   ├── SnapshotFormatError         not a JWS, or a payload that is not a snapshot
    │   ├── SnapshotSignatureMissing    unsigned (`alg: none`, empty signature, no signature)
    │   ├── SnapshotUntrustedSigner     a signature by a key the trusted root does not name
    │   ├── SnapshotDuplicateSigner     two signatures by the same key
    │   ├── SnapshotSignatureInvalid    a signature does not verify with the key it names
    │   ├── SnapshotBelowThreshold      fewer valid signatures than the root's threshold
    │   ├── SnapshotRollback            version not newer than the one held
    │   ├── SnapshotExpired             `expires_at` has passed
    │   └── RootError                   the root chain it carries was refused
    │       ├── RootChainBroken             a root not signed by a threshold of the previous
    │       │                               root's keys and of its own, not version N+1, malformed
    │       ├── RootExpired                 the newest root reached has expired
    │       └── RootRollback                signed under a root older than the one held
    ├── RegistryStale               the last good snapshot has expired (fail closed)
    ├── RegistryUnavailable         no snapshot has been loaded yet
    ├── KeyLifecycleError           key lifecycle: unknown kid, a transition that is not allowed
    │   └── KeyRefused                  a key may not sign now / verify this signature
    └── PkiError                    the development PKI could not be created or used
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "KeyLifecycleError",
    "KeyRefused",
    "PkiError",
    "RegistryError",
    "RegistryStale",
    "RegistryUnavailable",
    "RootChainBroken",
    "RootError",
    "RootExpired",
    "RootRollback",
    "SnapshotBelowThreshold",
    "SnapshotDuplicateSigner",
    "SnapshotError",
    "SnapshotExpired",
    "SnapshotFormatError",
    "SnapshotRollback",
    "SnapshotSignatureInvalid",
    "SnapshotSignatureMissing",
    "SnapshotUntrustedSigner",
    "SourceError",
    "SourceProblem",
]


class RegistryError(Exception):
    """Root of every error the registry raises."""


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """One problem in the registry source: where it is and what is wrong."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


class SourceError(RegistryError):
    """The registry source is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[SourceProblem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        if count == 1:  # one line, as every other refusal on the command line
            super().__init__(f"registry source: {self.problems[0]}")
            return
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"registry source has {count} problems:\n{lines}")


class SnapshotError(RegistryError):
    """A signed registry snapshot was refused; the one held (if any) stays in force."""

    reason = "SNAPSHOT_REFUSED"


class SnapshotFormatError(SnapshotError):
    reason = "FORMAT"


class SnapshotSignatureMissing(SnapshotError):
    reason = "UNSIGNED"


class SnapshotUntrustedSigner(SnapshotError):
    reason = "UNTRUSTED_SIGNER"


class SnapshotSignatureInvalid(SnapshotError):
    reason = "BAD_SIGNATURE"


class SnapshotDuplicateSigner(SnapshotError):
    reason = "DUPLICATE_SIGNER"


class SnapshotBelowThreshold(SnapshotError):
    reason = "BELOW_THRESHOLD"


class SnapshotRollback(SnapshotError):
    reason = "ROLLBACK"


class SnapshotExpired(SnapshotError):
    reason = "EXPIRED"


class RootError(SnapshotError):
    """The trusted root could not be read, or a root chain does not lead from the one held."""

    reason = "ROOT_CHAIN"


class RootChainBroken(RootError):
    reason = "ROOT_CHAIN"


class RootExpired(RootError):
    reason = "ROOT_EXPIRED"


class RootRollback(RootError):
    reason = "ROOT_ROLLBACK"


class RegistryStale(RegistryError):
    """The last good snapshot has expired: cross-region decisions fail closed."""


class RegistryUnavailable(RegistryError):
    """No registry snapshot has been loaded yet."""


class KeyLifecycleError(RegistryError):
    """A key lifecycle command was refused (unknown kid, a transition that is not allowed)."""


class KeyRefused(KeyLifecycleError):
    """A key may not be used as asked: not allowed to sign now, or revoked before a signature."""


class PkiError(RegistryError):
    """The development PKI could not be created or read."""
