"""Pages that fit: every paged response stays under a standard client's 4 MiB message
limit, whatever its `limit` asks for.

A page takes items while their encoded size fits the budget; the first item is always
taken (one item alone always fits: values are capped far below the budget), so a page
always makes progress and its next-page token resumes right after the last item taken.

Error handling: nothing here raises; callers decide what a full page means (a token).
"""

from __future__ import annotations

from google.protobuf.message import Message

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
