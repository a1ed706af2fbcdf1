"""RFC 3161 time-stamps at the gateway: the `[timestamp]` section, the gateway's one
`signer.TimeStampClient`, and the failure policy of sealing (docs/security.md, "Time-stamps").

    [timestamp]
    url = "http://tsa.example.gov.cn/tsr"        # the TSA (RFC 3161 over HTTP POST); "" = none
    tsa_certificates = "pki/tsa-roots.pem"       # PEM: the anchors a TSA's chain must end at
    timeout_seconds = 5.0

With a URL, each seal the gateway makes is time-stamped (JAdES `sigTst`, GB/T 38540
`timeStamp`) and so is each signed audit checkpoint. When the TSA does not answer usably the
seal is made anyway, without a time-stamp (baseline-B, or LT with a stapled OCSP response), and
the failure is logged and counted (`tongban_timestamp_requests_total{result}`): an answer is not
refused because a TSA is down; a seal without a time-stamp is valid while its certificate is,
and `signer.add_timestamp` can still add one while it is. The anchors are also what the seal
verifier trusts TSAs with, with or without a URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography import x509

from gateway._errors import ConfigError
from signer import TimeStampClient, TimeStampUnavailable

if TYPE_CHECKING:  # gateway.config imports this module; the metrics import the config
    from gateway.metrics import GatewayMetrics

__all__ = ["TimestampConfig", "checkpoint_stamper", "make_time_stamper", "stamp_or_none"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimestampConfig:
    """`[timestamp]`: the TSA to ask (`url`, "" for none) and the TSA trust anchors."""

    tsa_certificates: Path
    url: str = ""
    timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if self.url and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ConfigError(f"timestamp.url: {self.url!r} is not an http:// or https:// URL")
        if not 0 < self.timeout_seconds <= 60:
            raise ConfigError("timestamp.timeout_seconds: must be more than 0 and at most 60")

    def anchors(self) -> tuple[x509.Certificate, ...]:
        """The TSA trust anchors; `ConfigError` naming the file if it cannot be read."""
        where = f"timestamp.tsa_certificates: {self.tsa_certificates}"
        try:
            anchors = x509.load_pem_x509_certificates(self.tsa_certificates.read_bytes())
        except OSError as exc:
            raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None
        except ValueError:
            raise ConfigError(f"{where}: not a PEM bundle of certificates") from None
        return tuple(anchors)


def make_time_stamper(
    config: TimestampConfig | None,
    metrics: GatewayMetrics | None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> TimeStampClient | None:
    """The gateway's TSA client, or None without `[timestamp] url`."""
    if config is None or not config.url:
        return None
    return TimeStampClient(
        config.url,
        anchors=config.anchors(),
        timeout_seconds=config.timeout_seconds,
        report=metrics.timestamp_request if metrics is not None else None,
        clock=clock,
    )


def checkpoint_stamper(
    stamper: TimeStampClient | None,
) -> Callable[[bytes], bytes | None] | None:
    """What `AuditLog.time_stamper` calls with a checkpoint's note: a token, or None under the
    failure policy (the checkpoint is kept without one); None without a TSA."""
    if stamper is None:
        return None
    return lambda note: stamp_or_none(stamper, note, "an audit checkpoint")


def stamp_or_none(stamper: TimeStampClient, message: bytes, what: str) -> bytes | None:
    """A token over `message`, or None (logged; counted by the client) when the TSA fails:
    the failure policy of the module docstring. `what` names the object for the log."""
    try:
        return stamper.stamp(message)
    except TimeStampUnavailable as exc:
        log.warning("%s made without a time-stamp: %s", what, exc)
        return None
