"""A linearizability checker (Wing-Gong search with Lowe's cache, per partition) and the
sequential models it checks histories against. Small and separate: it knows nothing of
Accord beyond the KV model, and tests/unit/test_linearizability.py holds its self-tests."""

from tests.linearizability.checker import Model, PartitionResult, Result, check
from tests.linearizability.history import INDETERMINATE, Operation, partitions
from tests.linearizability.models import KvRegister, Register

__all__ = [
    "INDETERMINATE",
    "KvRegister",
    "Model",
    "Operation",
    "PartitionResult",
    "Register",
    "Result",
    "check",
    "partitions",
]
