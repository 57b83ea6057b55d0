"""Pages that fit: every paged response stays under a standard client's 4 MiB message
limit, whatever its `limit` asks for.

A page takes items while their encoded size fits the budget; the first item is always
taken (one item alone always fits: values are capped far below the budget), so a page
always makes progress and its next-page token resumes right after the last item taken.

Pages of one snapshot (a vote's ballots, a wait graph) resume by a token naming the etcd
revision they were read at and how many items came before: `{revision}.{offset}`.

Error handling: a page token this service did not issue is InvalidArgument on
`page_token`; otherwise nothing here raises; callers decide what a full page means.
"""

from __future__ import annotations

import re

from google.protobuf.message import Message

from accord.coordinator.substrate.errors import invalid

# Standard gRPC clients refuse messages over 4 MiB; a page leaves room for its header.
MAX_PAGE_BYTES = 3 * 1024 * 1024
# What one repeated-field entry costs on the wire beyond its own bytes (tag + length).
_ENTRY_OVERHEAD = 6


class PageBudget:
    """Bytes left in one page."""

    def __init__(self, limit: int = MAX_PAGE_BYTES) -> None:
        self.left = limit
        self.taken = 0

    def take(self, item: Message) -> bool:
        """Count item against the page; False (and nothing counted) once it would not
        fit, unless the page is still empty."""
        size = item.ByteSize() + _ENTRY_OVERHEAD
        if size > self.left and self.taken:
            return False
        self.left -= size
        self.taken += 1
        return True


def parse_snapshot_token(token: str) -> tuple[int, int]:
    """(revision, offset) of a snapshot page token; (0, 0) for none."""
    if not token:
        return 0, 0
    found = re.fullmatch(r"([0-9]{1,19})\.([0-9]{1,19})", token)
    if found is None or not 2 <= int(found[1]) < 2**63 or not 0 < int(found[2]) < 2**63:
        raise invalid("page_token", "is not a token this service issued")
    return int(found[1]), int(found[2])


def snapshot_token(revision: int, offset: int) -> str:
    """The token of the page starting after `offset` items read at revision; "" when
    there is no such page."""
    return f"{revision}.{offset}" if offset else ""
