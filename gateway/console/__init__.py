"""The web console (`tongban console serve`): citizens' and oversight staff's pages, served as
a client of the region's gateway over mutual TLS (docs/console.md)."""

from gateway.console._app import Console, SecurityHeaders, create_app
from gateway.console._config import AgencyIdentity, ConsoleConfig, ConsoleConfigError
from gateway.console._serve import EmbeddedServer, serve_console

__all__ = [
    "AgencyIdentity",
    "Console",
    "ConsoleConfig",
    "ConsoleConfigError",
    "EmbeddedServer",
    "SecurityHeaders",
    "create_app",
    "serve_console",
]
