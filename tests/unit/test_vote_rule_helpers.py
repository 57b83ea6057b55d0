"""The client's Rule helpers build the contract's Rule message, and describe it."""

from __future__ import annotations

from accord.client import Rule
from accord.v1 import votes_pb2


def test_rule_helpers_build_the_contract_message() -> None:
    assert Rule.fraction(2, 3, of_electorate=True).to_proto() == votes_pb2.Rule(
        kind=votes_pb2.RULE_KIND_FRACTION,
        fraction=votes_pb2.Ratio(numerator=2, denominator=3),
        of_electorate=True,
    )
    assert Rule.k_of_n(3).to_proto() == votes_pb2.Rule(kind=votes_pb2.RULE_KIND_K_OF_N, k=3)
    assert Rule.weighted_threshold(5.5).to_proto().threshold_weight == 5.5
    assert Rule.unanimous().to_proto().kind == votes_pb2.RULE_KIND_UNANIMOUS
    for rule in (Rule.majority(of_electorate=True), Rule.fraction(2, 3), Rule.k_of_n(2)):
        assert Rule.from_proto(rule.to_proto()) == rule
    assert str(Rule.fraction(2, 3)) == "at least 2/3 of the weight cast"
    assert Rule.k_of_n(2).describe(5) == "at least 2 of 5 voters choose the same option"
    assert "electorate" in Rule.majority(of_electorate=True).describe()
