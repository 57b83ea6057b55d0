"""The google/rpc protos shipped in proto/google/rpc for other languages define what the
coordinator sends: the same messages, enums, field names, numbers and types as the
googleapis-common-protos package the Python sides encode and decode error details with."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2

PROTO = Path(__file__).resolve().parents[2] / "proto"
SHIPPED = ["status", "error_details", "code"]


def shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    """What the wire and the JSON mapping depend on, nothing about comments or layout."""

    def message(m: descriptor_pb2.DescriptorProto) -> Any:
        fields = [(f.name, f.number, f.type, f.label, f.type_name) for f in m.field]
        return (fields, [message(n) for n in m.nested_type], [enum(e) for e in m.enum_type])

    def enum(e: descriptor_pb2.EnumDescriptorProto) -> Any:
        return (e.name, [(v.name, v.number) for v in e.value])

    return {
        "package": file.package,
        "dependencies": list(file.dependency),
        "messages": {m.name: message(m) for m in file.message_type},
        "enums": [enum(e) for e in file.enum_type],
    }


@pytest.fixture(scope="module")
def compiled(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = tmp_path_factory.mktemp("rpc") / "set.binpb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [f"google/rpc/{name}.proto" for name in SHIPPED]
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"-I{well_known}"]
    subprocess.run([*protoc, f"--descriptor_set_out={out}", *files], check=True)
    found = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in found.file}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_proto_matches_the_published_one(
    compiled: dict[str, descriptor_pb2.FileDescriptorProto], name: str
) -> None:
    published = descriptor_pb2.FileDescriptorProto()
    importlib.import_module(f"google.rpc.{name}_pb2").DESCRIPTOR.CopyToProto(published)
    assert shape(compiled[f"google/rpc/{name}.proto"]) == shape(published)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_proto_keeps_its_license(name: str) -> None:
    head = (PROTO / "google" / "rpc" / f"{name}.proto").read_text().splitlines()[:15]
    assert any("Google LLC" in line for line in head)
    assert any("Apache License, Version 2.0" in line for line in head)
