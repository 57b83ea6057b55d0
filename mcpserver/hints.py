"""Tool annotations, stated in full for every tool: MCP's defaults (not read-only,
destructive, not idempotent, open world) are the worst case, and hosts decide on
confirmations from them. Accord is a closed world (openWorldHint false): a tool touches
only the service.

Error handling: none; these are constants.
"""

from __future__ import annotations

from mcp_types import ToolAnnotations


def read_only(title: str) -> ToolAnnotations:
    """A read: changes nothing (retrying it is always safe)."""
    return ToolAnnotations(
        title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True,
        open_world_hint=False,
    )  # fmt: skip


def writes(title: str, *, destructive: bool, idempotent: bool) -> ToolAnnotations:
    """A change. destructive: it may replace or remove what is there (not only add);
    idempotent: the same call again has no further effect."""
    return ToolAnnotations(
        title=title, read_only_hint=False, destructive_hint=destructive,
        idempotent_hint=idempotent, open_world_hint=False,
    )  # fmt: skip
