"""Serving the console with uvicorn: on its own (`tongban console serve`) or inside a running
event loop beside the demo's gateways (`EmbeddedServer`)."""

from __future__ import annotations

import contextlib
from collections.abc import Generator

import uvicorn

from gateway.console._app import create_app
from gateway.console._config import ConsoleConfig

__all__ = ["EmbeddedServer", "serve_console"]


def _uvicorn_config(config: ConsoleConfig) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config),
        host=config.listen_host,
        port=config.listen_port,
        access_log=False,  # paths and addresses of citizens are not logged here
        log_level="warning",
        lifespan="on",
        ssl_certfile=str(config.tls_certificate) if config.tls_certificate else None,
        ssl_keyfile=str(config.tls_private_key) if config.tls_private_key else None,
        server_header=False,
    )


def serve_console(config: ConsoleConfig) -> None:
    """Serve until SIGINT or SIGTERM."""
    uvicorn.Server(_uvicorn_config(config)).run()


class EmbeddedServer(uvicorn.Server):
    """The console in an event loop that handles its own signals (the demo's)."""

    def __init__(self, config: ConsoleConfig) -> None:
        super().__init__(_uvicorn_config(config))

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
