"""What a well-formed proposal and ballot are. Checked before anything touches etcd.

Every problem is reported at once, as a field violation naming the field, so an agent
can fix its request in one go. A proposal is normalised here (defaults filled in, the
deadline made absolute), and the normalised spec is what is stored and compared when the
same vote id is proposed again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from google.protobuf import timestamp_pb2

from accord.coordinator.leases.store import MAX_LABEL_BYTES, MAX_LABELS
from accord.coordinator.substrate import clock
from accord.coordinator.substrate.errors import FieldViolation, clip
from accord.coordinator.substrate.limits import require_counts
from accord.v1 import votes_pb2

MAX_QUESTION_BYTES = 4096
MAX_OPTIONS = 64
MAX_OPTION_BYTES = 256
MAX_VOTERS = 5000
MAX_VETO_HOLDERS = 64
MAX_RATIONALE_BYTES = 4096
MAX_REASON_BYTES = 1024
MAX_WEIGHT = 1e12
MAX_DEADLINE_SECONDS = 365 * 24 * 3600
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600
MAX_RETENTION_SECONDS = 365 * 24 * 3600
_VOTE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_AGENT_RE = re.compile(r"[\x21-\x7e]{1,128}")
_RULES = set(votes_pb2.RuleKind.values()) - {votes_pb2.RULE_KIND_UNSPECIFIED}


def check_vote_id(field: str, vote_id: str, *, allow_empty: bool = False) -> list[FieldViolation]:
    if not vote_id and allow_empty:
        return []
    if not _VOTE_ID_RE.fullmatch(vote_id):
        return [FieldViolation(field, "must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', '-'")]
    return []


def _text(field: str, value: str, limit: int, *, required: bool) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, "must not be empty")] if required else []
    size = len(value.encode())
    if size > limit:
        return [FieldViolation(field, f"is {size} bytes; the limit is {limit}")]
    if any(ord(ch) < 0x20 and ch not in "\n\t" for ch in value):
        return [FieldViolation(field, "contains control characters")]
    return []


def _weight_ok(value: float) -> bool:
    return math.isfinite(value) and 0 < value <= MAX_WEIGHT


def normalise(spec: votes_pb2.VoteSpec, now: float | None = None) -> votes_pb2.VoteSpec:
    """A copy with defaults filled in and the deadline made absolute (call after check)."""
    out = votes_pb2.VoteSpec()
    out.CopyFrom(spec)
    if out.electorate.WhichOneof("source") == "voters":
        for voter in out.electorate.voters.voters:
            if voter.weight == 0:
                voter.weight = 1.0
    if not out.HasField("deadline"):
        moment = (clock.now() if now is None else now) + out.timeout_ms / 1000
        out.deadline.FromMilliseconds(int(moment * 1000))
    if out.on_tie == votes_pb2.TIE_POLICY_UNSPECIFIED:
        out.on_tie = votes_pb2.TIE_POLICY_NO_DECISION
    if not out.retention_seconds:
        out.retention_seconds = DEFAULT_RETENTION_SECONDS
    return out


def check_spec(spec: votes_pb2.VoteSpec, now: float | None = None) -> list[FieldViolation]:
    """Everything that can be checked without knowing who holds a lease now."""
    now = clock.now() if now is None else now
    require_counts(  # before anything looks at the lists' entries
        ("spec.options", len(spec.options), MAX_OPTIONS),
        ("spec.veto_holders", len(spec.veto_holders), MAX_VETO_HOLDERS),
        ("spec.electorate.voters.voters", len(spec.electorate.voters.voters), MAX_VOTERS),
        (
            "spec.electorate.lease_labels.labels",
            len(spec.electorate.lease_labels.labels),
            MAX_LABELS,
        ),
    )
    out = _text("spec.question", spec.question, MAX_QUESTION_BYTES, required=True)
    options = list(spec.options)
    if not options:
        out.append(FieldViolation("spec.options", "must list at least one option"))
    elif len(options) > MAX_OPTIONS:
        out.append(
            FieldViolation("spec.options", f"has {len(options)}; the limit is {MAX_OPTIONS}")
        )
    seen: set[str] = set()
    for i, option in enumerate(options):
        out += _text(f"spec.options[{i}]", option, MAX_OPTION_BYTES, required=True)
        if option in seen:
            out.append(FieldViolation(f"spec.options[{i}]", f"duplicates option {quote(option)}"))
        seen.add(option)
    source = spec.electorate.WhichOneof("source")
    if source is None:
        out.append(
            FieldViolation("spec.electorate", "must name voters or select them by lease labels")
        )
    elif source == "voters":
        voters = spec.electorate.voters.voters
        bad = check_voters(voters)
        out += bad
        if not bad:  # limits that depend on the electorate, reported with the rest
            out += check_against_electorate(
                spec, [votes_pb2.Voter(agent_id=v.agent_id, weight=v.weight or 1.0) for v in voters]
            )
    else:
        out += _check_labels(dict(spec.electorate.lease_labels.labels))
    out += _check_rule(spec.rule)
    quorum = spec.quorum
    if quorum.min_voters < 0:
        out.append(FieldViolation("spec.quorum.min_voters", "must not be negative"))
    if not (math.isfinite(quorum.min_weight) and quorum.min_weight >= 0):
        out.append(FieldViolation("spec.quorum.min_weight", "must be a finite number >= 0"))
    holders = list(spec.veto_holders)
    if len(holders) > MAX_VETO_HOLDERS:
        out.append(
            FieldViolation(
                "spec.veto_holders", f"has {len(holders)}; the limit is {MAX_VETO_HOLDERS}"
            )
        )
    for i, holder in enumerate(holders):
        if not _AGENT_RE.fullmatch(holder):
            out.append(FieldViolation(f"spec.veto_holders[{i}]", "is not an agent id"))
        elif holders.index(holder) != i:
            out.append(FieldViolation(f"spec.veto_holders[{i}]", f"duplicates {quote(holder)}"))
    out += _check_deadline(spec, now)
    if not 0 <= spec.retention_seconds <= MAX_RETENTION_SECONDS:
        out.append(
            FieldViolation("spec.retention_seconds", f"must be 0-{MAX_RETENTION_SECONDS} seconds")
        )
    if spec.on_tie not in votes_pb2.TiePolicy.values():
        out.append(FieldViolation("spec.on_tie", f"unknown tie policy {spec.on_tie}"))
    return out


def _check_deadline(spec: votes_pb2.VoteSpec, now: float) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if spec.HasField("deadline") and not _valid_timestamp(spec.deadline):
        out.append(FieldViolation("spec.deadline", "is not a valid timestamp"))
    elif spec.HasField("deadline") and spec.timeout_ms:
        out.append(
            FieldViolation("spec.timeout_ms", "give either deadline or timeout_ms, not both")
        )
    elif spec.HasField("deadline"):
        due = spec.deadline.ToMilliseconds() / 1000
        if due <= now:
            out.append(
                FieldViolation("spec.deadline", f"is in the past ({now - due:.1f} seconds ago)")
            )
        elif due - now > MAX_DEADLINE_SECONDS:
            out.append(FieldViolation("spec.deadline", "is more than 365 days away"))
    elif spec.timeout_ms <= 0:
        out.append(
            FieldViolation("spec.timeout_ms", "must be > 0 (or give deadline): every vote ends")
        )
    elif spec.timeout_ms > MAX_DEADLINE_SECONDS * 1000:
        out.append(FieldViolation("spec.timeout_ms", "is more than 365 days"))
    return out


def check_voters(voters: Sequence[votes_pb2.Voter]) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if not voters:
        out.append(FieldViolation("spec.electorate.voters.voters", "must name at least one voter"))
    elif len(voters) > MAX_VOTERS:
        out.append(
            FieldViolation(
                "spec.electorate.voters.voters", f"has {len(voters)}; the limit is {MAX_VOTERS}"
            )
        )
    seen: set[str] = set()
    for i, voter in enumerate(voters):
        field = f"spec.electorate.voters.voters[{i}]"
        if not _AGENT_RE.fullmatch(voter.agent_id):
            out.append(FieldViolation(f"{field}.agent_id", "is not an agent id"))
        elif voter.agent_id in seen:
            out.append(FieldViolation(f"{field}.agent_id", f"duplicates {quote(voter.agent_id)}"))
        seen.add(voter.agent_id)
        if voter.weight != 0 and not _weight_ok(voter.weight):
            out.append(FieldViolation(f"{field}.weight", f"must be > 0 (and <= {MAX_WEIGHT:g})"))
    return out


def _check_rule(rule: votes_pb2.Rule) -> list[FieldViolation]:
    if rule.kind not in _RULES:
        return [FieldViolation("spec.rule.kind", "must name a rule (MAJORITY, FRACTION, ...)")]
    out: list[FieldViolation] = []
    if rule.kind == votes_pb2.RULE_KIND_FRACTION:
        ratio = rule.fraction
        if not (0 < ratio.numerator <= ratio.denominator):
            out.append(
                FieldViolation(
                    "spec.rule.fraction",
                    f"{ratio.numerator}/{ratio.denominator} is outside (0, 1]: give "
                    "0 < numerator <= denominator",
                )
            )
    elif rule.kind == votes_pb2.RULE_KIND_K_OF_N and rule.k < 1:
        out.append(FieldViolation("spec.rule.k", "must be at least 1"))
    elif rule.kind == votes_pb2.RULE_KIND_WEIGHTED_THRESHOLD and not (
        math.isfinite(rule.threshold_weight) and rule.threshold_weight > 0
    ):
        out.append(FieldViolation("spec.rule.threshold_weight", "must be a finite number > 0"))
    if rule.of_electorate and rule.kind not in (
        votes_pb2.RULE_KIND_MAJORITY,
        votes_pb2.RULE_KIND_FRACTION,
    ):
        out.append(
            FieldViolation("spec.rule.of_electorate", "applies to MAJORITY and FRACTION only")
        )
    return out


def check_against_electorate(
    spec: votes_pb2.VoteSpec, voters: Sequence[votes_pb2.Voter]
) -> list[FieldViolation]:
    """The limits that depend on the (resolved) electorate's size and weight."""
    out: list[FieldViolation] = []
    size = len(voters)
    weight = sum(v.weight for v in voters)
    rule = spec.rule
    if rule.kind == votes_pb2.RULE_KIND_K_OF_N and rule.k > size:
        out.append(FieldViolation("spec.rule.k", f"is {rule.k}, more than the {size} voters"))
    threshold = rule.threshold_weight
    if (
        rule.kind == votes_pb2.RULE_KIND_WEIGHTED_THRESHOLD
        and math.isfinite(threshold)
        and threshold > weight
    ):
        out.append(
            FieldViolation(
                "spec.rule.threshold_weight",
                f"is {rule.threshold_weight:g}, more than the electorate's weight {weight:g}",
            )
        )
    if spec.quorum.min_voters > size:
        out.append(
            FieldViolation(
                "spec.quorum.min_voters",
                f"is {spec.quorum.min_voters}, more than the {size} voters",
            )
        )
    if math.isfinite(spec.quorum.min_weight) and spec.quorum.min_weight > weight:
        out.append(
            FieldViolation(
                "spec.quorum.min_weight",
                f"is {spec.quorum.min_weight:g}, more than the electorate's weight {weight:g}",
            )
        )
    return out


def check_ballot(
    vote: votes_pb2.Vote,
    agent: str,
    weight: float | None,
    *,
    choice: str,
    abstain: bool,
    veto: bool,
    rationale: str,
    confidence: float,
) -> tuple[list[FieldViolation], str]:
    """(malformed fields, why the agent may not cast it: empty when it may). weight is
    the agent's in the electorate, None when it is not a voter."""
    spec = vote.spec
    out = _text("rationale", rationale, MAX_RATIONALE_BYTES, required=False)
    if not (math.isfinite(confidence) and 0 <= confidence <= 1):
        out.append(FieldViolation("confidence", "must be between 0 and 1"))
    is_voter = weight is not None
    may_veto = agent in spec.veto_holders
    if not agent:
        return out, "the call carries no agent id (accord-agent-id metadata)"
    if not is_voter and not may_veto:
        return out, f"agent {quote(agent)} is not in this vote's electorate"
    if veto and not may_veto:
        return out, f"agent {quote(agent)} is not a veto holder of this vote"
    if choice and choice not in spec.options:
        shown = ", ".join(quote(o, 40) for o in spec.options[:10])
        more = f" and {len(spec.options) - 10} more" if len(spec.options) > 10 else ""
        out.append(FieldViolation("choice", f"{quote(choice)} is not an option ({shown}{more})"))
    if choice and abstain:
        out.append(FieldViolation("abstain", "give a choice or abstain, not both"))
    if abstain and not spec.allow_abstain:
        out.append(FieldViolation("abstain", "this vote does not allow abstaining"))
    if is_voter and not choice and not abstain and not veto:
        out.append(FieldViolation("choice", "must name an option (or abstain, where allowed)"))
    if not is_voter and (choice or abstain):
        out.append(
            FieldViolation(
                "choice", "a veto holder outside the electorate only vetoes (or declines to)"
            )
        )
    return out, ""


def quote(text: str, limit: int = 60) -> str:
    """text for an error or explanation, shortened: errors travel in bounded trailers."""
    return clip(repr(text), limit)


def _check_labels(labels: dict[str, str]) -> list[FieldViolation]:
    field = "spec.electorate.lease_labels.labels"
    if not labels:
        return [FieldViolation(field, "must hold at least one label")]
    if len(labels) > MAX_LABELS:
        return [
            FieldViolation(field, f"has {len(labels)} labels; leases carry at most {MAX_LABELS}")
        ]
    return [
        FieldViolation(
            f"{field}[{quote(k, 40)}]", f"needs a name, and at most {MAX_LABEL_BYTES} bytes"
        )
        for k, value in labels.items()
        if not k or len(k.encode()) > MAX_LABEL_BYTES or len(value.encode()) > MAX_LABEL_BYTES
    ]


def _valid_timestamp(stamp: timestamp_pb2.Timestamp) -> bool:
    return -62135596800 <= stamp.seconds <= 253402300799 and 0 <= stamp.nanos < 1_000_000_000


def deadline_of(vote: votes_pb2.Vote) -> float:
    return vote.spec.deadline.ToMilliseconds() / 1000


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(int(seconds * 1000))
    return stamp
