"""Bearer tokens: what a well-formed one looks like, and what is refused before any
lookup (so garbage never costs an etcd read)."""

from __future__ import annotations

import pytest

from accord.coordinator.auth import tokens
from accord.coordinator.substrate.errors import Unauthenticated


def test_a_new_token_round_trips() -> None:
    token = tokens.new()
    text = str(token)
    assert text.startswith("acc1.") and len(text) == 4 + 1 + 16 + 1 + 43
    parsed = tokens.parse(text)
    assert parsed == token
    assert tokens.matches(parsed.secret, token.digest)
    assert not tokens.matches(tokens.new().secret, token.digest)


def test_tokens_are_unique() -> None:
    assert len({str(tokens.new()) for _ in range(100)}) == 100


@pytest.mark.parametrize(
    "text",
    [
        "",
        "acc1",
        "acc1..",
        "acc2." + "A" * 16 + "." + "B" * 43,
        "acc1." + "A" * 15 + "." + "B" * 43,
        "acc1." + "A" * 16 + "." + "B" * 42,
        "acc1." + "A" * 16 + "." + "B" * 43 + ".x",
        "acc1." + "A" * 16 + "." + "B" * 42 + "+",
        "\x00\xff" * 40,
        "x" * 10_000,
    ],
)
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(Unauthenticated):
        tokens.parse(text)
