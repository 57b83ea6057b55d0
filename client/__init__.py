"""Accord's Python client: `AsyncClient` (async first) and `Client` (blocking)."""

from accord.client.client import AsyncClient
from accord.client.errors import (
    AccordError,
    BadIdentityError,
    CompactedError,
    ConditionFailedError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    RequestIdReusedError,
    UnavailableError,
)
from accord.client.kv import (
    Delete,
    DeleteResult,
    EventType,
    Expect,
    HistoryEntry,
    HistoryPage,
    KeyValue,
    Page,
    Provenance,
    Put,
    TxnResult,
    Watch,
    WatchEvent,
    WriteResult,
)
from accord.client.retry import RetryPolicy
from accord.client.sync import Client

__all__ = [
    "AccordError",
    "AsyncClient",
    "BadIdentityError",
    "Client",
    "CompactedError",
    "ConditionFailedError",
    "DeadlineExceededError",
    "Delete",
    "DeleteResult",
    "EventType",
    "Expect",
    "HistoryEntry",
    "HistoryPage",
    "InternalError",
    "InvalidArgumentError",
    "KeyValue",
    "NotFoundError",
    "Page",
    "Provenance",
    "Put",
    "RequestIdReusedError",
    "RetryPolicy",
    "TxnResult",
    "UnavailableError",
    "Watch",
    "WatchEvent",
    "WriteResult",
]
