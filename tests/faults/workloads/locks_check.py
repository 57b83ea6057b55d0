"""The fenced-counter checker (issue 16, workload 2): no lost increment, every
acknowledged add in the set, and no write accepted from a holder whose lease lapsed.

Its inputs are the recorded increments (Operation input ("incr", op, agent, token);
output the write's revision, or INDETERMINATE), the attempts made by a holder resumed
after its lease lapsed (they must all have been refused), and what etcd holds: every
applied version of the counter (from KV history, each carrying the op, fence token and
count it wrote) and the final set. Checks:
- the applied versions count 1, 2, 3, ... in revision order: each holder read the
  previous holder's write (a gap or repeat is a lost increment);
- their fence tokens never decrease: a write carries an older grant than one applied
  before it only if an expired holder's write was accepted;
- every acknowledged increment is applied exactly once, at the revision it was told;
  no increment is applied twice, and nothing applied comes from an unknown or refused
  attempt; so the final count lies between the acknowledged count and that plus the
  indeterminate ones;
- the set holds every acknowledged add and only adds that may have happened.

Error handling: the checker never raises on a bad history; it returns the problems.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from tests.linearizability import Operation


@dataclass(frozen=True, slots=True)
class Version:
    """One applied write of the counter key, as etcd's history holds it."""

    revision: int
    count: int
    token: int
    op: str

    @staticmethod
    def decode(revision: int, value: bytes) -> Version:
        row = json.loads(value)
        return Version(revision, int(row["n"]), int(row["token"]), str(row["op"]))


def encode(count: int, token: int, op: str) -> bytes:
    """The counter's value: its count and who wrote it with which fence."""
    return json.dumps({"n": count, "token": token, "op": op}).encode()


@dataclass(frozen=True, slots=True)
class StaleAttempt:
    """A write made by a holder resumed after its lease lapsed: refused, with reason."""

    op: str
    token: int
    accepted: bool
    reason: str


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    acknowledged: int = 0
    indeterminate: int = 0
    applied: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check(
    increments: list[Operation],
    stale: list[StaleAttempt],
    history: list[Version],
    final_set: set[str],
) -> Verdict:
    verdict = Verdict()
    problems = verdict.problems
    acked = {op.input[1]: op for op in increments if not op.indeterminate}  # type: ignore[index]
    maybe = {op.input[1] for op in increments if op.indeterminate}  # type: ignore[index]
    verdict.acknowledged, verdict.indeterminate = len(acked), len(maybe)
    versions = sorted(history, key=lambda v: v.revision)
    verdict.applied = len(versions)

    previous: Version | None = None
    for version in versions:
        expected = previous.count + 1 if previous else 1
        if version.count != expected:
            problems.append(
                f"lost increment: revision {version.revision} ({version.op}, token "
                f"{version.token}) wrote {version.count}, expected {expected}"
            )
        if previous and version.token < previous.token:
            problems.append(
                f"stale fence accepted: revision {version.revision} ({version.op}) wrote with "
                f"token {version.token} after token {previous.token} at {previous.revision}"
            )
        previous = version

    applied = Counter(v.op for v in versions)
    for op, times in applied.items():
        if times > 1:
            problems.append(f"increment {op} applied {times} times")
        if op not in acked and op not in maybe:
            problems.append(f"increment {op} applied but it was refused or never made")
    at = {v.op: v.revision for v in versions}
    for op, recorded in acked.items():
        if op not in applied:
            problems.append(f"acknowledged increment {op} is missing from the counter's history")
        elif at[op] != recorded.output:
            problems.append(f"increment {op} told revision {recorded.output}, applied at {at[op]}")
    for attempt in stale:
        if attempt.accepted or attempt.op in applied:
            problems.append(
                f"a holder whose lease lapsed wrote: {attempt.op} with token {attempt.token}"
            )
    final = versions[-1].count if versions else 0
    if not len(acked) <= final <= len(acked) + len(maybe):
        problems.append(
            f"final count {final} outside [{len(acked)}, {len(acked) + len(maybe)}] "
            "(acknowledged, plus indeterminate)"
        )

    missing = sorted(set(acked) - final_set)
    if missing:
        problems.append(f"acknowledged adds missing from the set: {missing[:5]}")
    unknown = sorted(final_set - set(acked) - maybe)
    if unknown:
        problems.append(f"the set holds adds that were refused or never made: {unknown[:5]}")
    return verdict
