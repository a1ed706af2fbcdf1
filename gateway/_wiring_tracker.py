"""The citizen's data tracker in a gateway (docs/oversight.md "The citizen's data tracker"):
served as `tongban.v1.Tracker` to the region's agencies, answering `Peer.SubjectTrail` to the
other regions' gateways. A gateway has it when it has the query path (peers and an audit log):
the tracker asks the other regions over the peer channel and audits every call."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit import AuditLog
from gateway.config import GatewayConfig
from gateway.peers import PeerPool
from gateway.services.tracker import Tracker, TrackerService
from registry import RegistryStore
from signer import open_signing_key
from tongban.v1 import tracker_pb2, tracker_pb2_grpc

__all__ = ["TRACKER_SERVICE", "build_tracker", "serve_tracker"]

TRACKER_SERVICE: Final = tracker_pb2.DESCRIPTOR.services_by_name["Tracker"].full_name


def build_tracker(
    config: GatewayConfig,
    audit: AuditLog | None,
    peers: PeerPool | None,
    store: RegistryStore,
    clock: Callable[[], datetime],
) -> Tracker | None:
    """The tracker, signing its answers with the audit key; None without the query path."""
    if audit is None or peers is None or config.audit is None or config.exchange is None:
        return None
    audit_key = open_signing_key(config.audit.key, config.tls_passphrase)
    assert isinstance(audit_key, ed25519.Ed25519PrivateKey)  # build_audit_log checked it
    return Tracker(
        audit,
        store,
        peers,
        region=config.region,
        pseudonym_key=config.audit.pseudonym_key,
        audit_key=audit_key,
        peer_timeout_seconds=config.exchange.tracker_peer_timeout_seconds,
        clock=clock,
    )


def serve_tracker(tracker: Tracker | None, server: grpc.aio.Server) -> None:
    """Add the Tracker service to `server` (nothing without a tracker)."""
    if tracker is not None:
        tracker_pb2_grpc.add_TrackerServicer_to_server(TrackerService(tracker), server)
