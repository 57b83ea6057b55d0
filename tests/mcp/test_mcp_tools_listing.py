"""What an agent host sees when it lists the tools, over stdio and streamable HTTP: each
tool's input schema (typed, with the required arguments), output schema and
annotations, true to what the service guarantees."""

from __future__ import annotations

from tests.mcp.conftest import Agents

# name -> (readOnlyHint, destructiveHint, idempotentHint), and the required arguments
EXPECTED: dict[str, tuple[tuple[bool, bool, bool], set[str]]] = {
    "accord_memory_get": ((True, False, True), {"key"}),
    "accord_memory_list": ((True, False, True), set()),
    "accord_memory_history": ((True, False, True), {"key"}),
    "accord_memory_put": ((False, True, False), {"key", "value"}),
    "accord_memory_update": ((False, True, False), {"key", "expected_value", "value"}),
    "accord_memory_delete": ((False, True, True), {"key"}),
    "accord_leases_start": ((False, False, True), set()),
    "accord_leases_status": ((True, False, True), set()),
    "accord_leases_end": ((False, True, True), set()),
    "accord_locks_acquire": ((False, False, False), {"name"}),
    "accord_locks_release": ((False, False, True), {"name"}),
    "accord_locks_describe": ((True, False, True), {"name"}),
    "accord_locks_why_blocked": ((True, False, True), {"name"}),
}

OUTPUT_FIELDS = {
    "accord_memory_get": {"key", "found", "value"},
    "accord_memory_put": {"key", "revision", "replayed", "value"},
    "accord_locks_acquire": {"lock", "token", "mode", "lease_id", "lease_started"},
    "accord_locks_why_blocked": {"blocked", "holders", "ahead_of_me", "cycle", "explanation"},
}


async def test_tools_have_schemas_and_true_annotations(agents: Agents) -> None:
    async with agents.open("alice") as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
    for name, ((read_only, destructive, idempotent), required) in EXPECTED.items():
        tool = tools[name]
        assert tool.description and len(tool.description) > 80, name  # written for an LLM
        hints = tool.annotations
        assert hints is not None, name
        assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (
            read_only,
            destructive,
            idempotent,
        ), name
        assert hints.open_world_hint is False, name
        schema = tool.input_schema
        assert schema["type"] == "object", name
        assert set(schema.get("required", [])) == required, name
        assert "ctx" not in schema["properties"], name  # the context is not an argument
        assert tool.output_schema is not None, name
    put = tools["accord_memory_put"].input_schema["properties"]
    assert put["expected_revision"]["anyOf"][0] == {"minimum": 0, "type": "integer"}
    assert put["encoding"]["enum"] == ["utf-8", "base64"]
    assert tools["accord_locks_acquire"].input_schema["properties"]["wait_seconds"]["maximum"] == 60
    for name, fields in OUTPUT_FIELDS.items():
        out = tools[name].output_schema
        assert out is not None and fields <= set(out["properties"]), name
