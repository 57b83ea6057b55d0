"""Effect keys (client/effect_keys.py): canonical JSON of a tool's arguments and the key
derived from run, step, tool and arguments. A key must be the same wherever and
whenever the same call is made (its retry must find the first attempt's record), and
differ for any other call."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from accord.client import NotJSONError, canonical_json, effect_key
from accord.client.effect_keys import KEY_PREFIX, MAX_DEPTH, compensation_key

ARGS = {"to": "ana@example.com", "body": "Olá", "cc": [1, 2.5, None, True]}
# Pinned: a change of the scheme must change KEY_PREFIX (keys already written under the
# old scheme would otherwise never be found again by a retry after an upgrade).
GOLDEN = "fx1-24af2426565ec7c8393770d6094b16f2267a56654bf7a4e68a615704f873dbfe"


def test_golden_key() -> None:
    assert effect_key("order-42", 3, "send_email", ARGS) == GOLDEN


def test_canonical_json_is_sorted_compact_utf8() -> None:
    value = {"b": 1, "a": [1.0, "é", (2, 3)], "c": {"z": None, "y": False}}
    assert canonical_json(value) == '{"a":[1.0,"é",[2,3]],"b":1,"c":{"y":false,"z":null}}'.encode()


def test_dict_order_does_not_matter() -> None:
    reordered = {"cc": [1, 2.5, None, True], "body": "Olá", "to": "ana@example.com"}
    nested_a = {"x": {"p": 1, "q": [{"m": 1, "n": 2}]}}
    nested_b = {"x": {"q": [{"n": 2, "m": 1}], "p": 1}}
    assert effect_key("order-42", 3, "send_email", reordered) == GOLDEN
    assert canonical_json(nested_a) == canonical_json(nested_b)


@pytest.mark.parametrize(
    ("run_id", "step", "tool", "arguments"),
    [
        ("order-43", 3, "send_email", ARGS),  # another run
        ("order-42", 4, "send_email", ARGS),  # another step
        ("order-42", "3", "send_email", ARGS),  # the step as text is another step
        ("order-42", 3, "send_sms", ARGS),  # another tool
        ("order-42", 3, "send_email", {**ARGS, "body": "Ola"}),  # another argument
        ("order-42", 3, "send_email", {**ARGS, "cc": [1, 2.5, None, 1]}),  # true is not 1
        ("order-42", 3, "send_email", {**ARGS, "extra": None}),  # null is not absent
        ("order-42", 3, "send_email", [ARGS]),
    ],
)
def test_any_other_call_has_another_key(
    run_id: str, step: int | str, tool: str, arguments: object
) -> None:
    assert effect_key(run_id, step, tool, arguments) != GOLDEN


def test_fields_do_not_run_into_each_other() -> None:
    # Plain concatenation would make these the same key.
    assert effect_key("a", 12, "c", None) != effect_key("a1", 2, "c", None)
    assert effect_key("a", 1, "bc", None) != effect_key("a", "1b", "c", None)
    assert effect_key("a", 1, "b", "c") != effect_key("a", 1, "b", ["c"])


def test_the_same_in_another_process() -> None:
    """Another interpreter, with another hash seed (dict and set order differ between
    processes), derives the same key."""
    script = (
        "from accord.client import effect_key;"
        "import json,sys;"
        "print(effect_key('order-42', 3, 'send_email', json.loads(sys.argv[1])))"
    )
    reordered = dict(reversed(list(ARGS.items())))
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(reordered)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.stdout.strip() == GOLDEN


def test_keys_are_bounded_ascii() -> None:
    key = effect_key("r" * 256, 10**30, "t" * 256, {"blob": "x" * 100_000})
    assert key.startswith(KEY_PREFIX) and len(key) == 68 and key.isascii()


@pytest.mark.parametrize(
    ("arguments", "where"),
    [
        ({"amount": float("nan")}, "arguments['amount']"),
        ({"amount": float("inf")}, "arguments['amount']"),
        ({"data": b"bytes"}, "arguments['data']: a bytes"),
        ({"tags": {"a", "b"}}, "arguments['tags']: a set"),
        ({1: "one"}, "key 1 is a int"),
        ({"s": "\ud800"}, "not valid Unicode"),
        ([object()], "arguments[0]: a object"),
    ],
)
def test_values_without_exact_json_are_refused(arguments: object, where: str) -> None:
    with pytest.raises(NotJSONError) as refused:
        canonical_json(arguments)
    assert where in str(refused.value)
    with pytest.raises(NotJSONError):
        effect_key("run", 1, "tool", arguments)


def test_nesting_is_bounded() -> None:
    deep: object = "leaf"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(NotJSONError, match="nested more than"):
        canonical_json(deep)


def test_step_must_be_int_or_str() -> None:
    with pytest.raises(NotJSONError, match="step must be"):
        effect_key("run", True, "tool", None)
    with pytest.raises(NotJSONError, match="step must be"):
        effect_key("run", 1.5, "tool", None)  # type: ignore[arg-type]


def test_compensation_keys() -> None:
    assert compensation_key("fx1-abc") == "compensate:fx1-abc"
    long = "k" * 250
    derived = compensation_key(long)
    assert derived.startswith("compensate:") and len(derived) == len("compensate:") + 64
