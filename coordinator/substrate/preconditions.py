"""Preconditions on one key: validation, the etcd compare, evaluation and wording."""

from __future__ import annotations

from typing import Any

from aetcd.rpc import rpc_pb2 as rpc

from accord.coordinator.substrate.errors import FieldViolation
from accord.v1 import kv_pb2


def is_set(precondition: kv_pb2.Precondition | None) -> bool:
    return precondition is not None and precondition.WhichOneof("expect") is not None


def check(field: str, precondition: kv_pb2.Precondition | None) -> list[FieldViolation]:
    if precondition is None:
        return []
    kind = precondition.WhichOneof("expect")
    if kind == "mod_revision" and precondition.mod_revision < 0:
        return [FieldViolation(f"{field}.mod_revision", "must not be negative")]
    if kind == "version" and precondition.version < 0:
        return [FieldViolation(f"{field}.version", "must not be negative")]
    if kind == "must_not_exist" and not precondition.must_not_exist:
        return [FieldViolation(f"{field}.must_not_exist", "set it to true, or leave it unset")]
    if kind == "must_exist" and not precondition.must_exist:
        return [FieldViolation(f"{field}.must_exist", "set it to true, or leave it unset")]
    return []


def compare(key: bytes, precondition: kv_pb2.Precondition) -> Any:
    """The etcd Compare that holds exactly when the precondition does."""
    kind = precondition.WhichOneof("expect")
    if kind == "mod_revision":
        return rpc.Compare(
            key=key,
            target=rpc.Compare.MOD,
            result=rpc.Compare.EQUAL,
            mod_revision=precondition.mod_revision,
        )
    if kind == "version":
        return rpc.Compare(
            key=key,
            target=rpc.Compare.VERSION,
            result=rpc.Compare.EQUAL,
            version=precondition.version,
        )
    if kind == "must_not_exist":
        return rpc.Compare(key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0)
    return rpc.Compare(key=key, target=rpc.Compare.VERSION, result=rpc.Compare.GREATER, version=0)


def holds(precondition: kv_pb2.Precondition, raw: Any | None) -> bool:
    """Evaluate against an etcd KeyValue (None: the key does not exist)."""
    kind = precondition.WhichOneof("expect")
    mod_revision = raw.mod_revision if raw is not None else 0
    version = raw.version if raw is not None else 0
    if kind == "mod_revision":
        return bool(mod_revision == precondition.mod_revision)
    if kind == "version":
        return bool(version == precondition.version)
    if kind == "must_not_exist":
        return raw is None
    if kind == "must_exist":
        return raw is not None
    return True


def describe(precondition: kv_pb2.Precondition) -> str:
    kind = precondition.WhichOneof("expect")
    if kind == "mod_revision":
        return f"mod_revision {precondition.mod_revision}"
    if kind == "version":
        return f"version {precondition.version}"
    if kind == "must_not_exist":
        return "that it does not exist"
    if kind == "must_exist":
        return "that it exists"
    return "nothing"
