"""The `[cases]` section of a gateway's configuration (read by `gateway.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gateway._errors import ConfigError

__all__ = ["DEFAULT_MATERIAL_BYTES", "MAX_MATERIAL_BYTES", "CasesConfig"]

DEFAULT_MATERIAL_BYTES: Final = 4 * 1024 * 1024  # bytes: one material, by default
# bytes: the most one material may be; a call carries it with its signed data and the other
# materials in one gRPC message of at most 16 MiB (gateway._limits.MAX_MESSAGE_BYTES)
MAX_MATERIAL_BYTES: Final = 12 * 1024 * 1024


@dataclass(frozen=True)
class CasesConfig:
    """Cross-region cases (docs/cases.md): whether a query for a conditional dataset must name
    an open case (`bind_queries`), and how large one material may be."""

    bind_queries: bool = True
    max_material_bytes: int = DEFAULT_MATERIAL_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.max_material_bytes <= MAX_MATERIAL_BYTES:
            raise ConfigError(
                f"cases.max_material_bytes: {self.max_material_bytes} is not from 1 to "
                f"{MAX_MATERIAL_BYTES} bytes (12 MiB)"
            )
