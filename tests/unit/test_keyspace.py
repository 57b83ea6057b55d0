"""Every etcd key Accord writes, as bytes: these are persisted data, so a change here
strands what is already stored. The expected values are written out by hand."""

from __future__ import annotations

from accord.coordinator.substrate.keyspace import Keyspace

K = Keyspace("accord")


def test_kv_keys() -> None:
    assert K.kv_prefix("team") == b"accord/ns/team/kv/"
    assert K.kv("team", "plan/a") == b"accord/ns/team/kv/plan/a"
    assert K.tomb("team", "plan/a") == b"accord/ns/team/tomb/plan/a"
    assert K.idem("team", "agent-1", "req-9") == b"accord/ns/team/idem/agent-1\x00req-9"


def test_lease_and_lock_keys() -> None:
    assert K.leases_prefix("team") == b"accord/ns/team/leases/"
    assert K.lease("team", 0x1F) == b"accord/ns/team/leases/000000000000001f"
    assert K.locks_prefix("team") == b"accord/ns/team/locks/"
    assert K.lock_queue("team", "doc") == b"accord/ns/team/locks/doc\x00"
    entry = K.lock_entry("team", "doc", 0x1F)
    assert entry == b"accord/ns/team/locks/doc\x00000000000000001f"
    assert K.parse_lock_entry("team", entry) == ("doc", 0x1F)
    assert K.parse_lock_entry("team", b"accord/ns/team/kv/doc") is None
    assert K.deadlocks_prefix("team") == b"accord/ns/team/deadlocks/"
    assert (
        K.deadlock("team", entry, 0x2A)
        == b"accord/ns/team/deadlocks/doc\x00000000000000001f\x00000000000000002a"
    )


def test_session_keys() -> None:
    assert K.sessions_prefix("team") == b"accord/ns/team/sessions/"
    assert K.session("team", "plan") == b"accord/ns/team/sessions/plan"
    data = K.session_data("team", "plan", 0xABC)
    assert data.prefix == b"accord/ns/team/sdata/plan\x000000000000000abc\x00"
    assert data.alive == data.prefix + b"alive"
    assert data.log("e1") == data.prefix + b"log\x00e1"
    assert data.snapshot(0x10) == data.prefix + b"snap\x000000000000000010\x00"
    assert data.presence(0xFF) == data.prefix + b"presence\x00000000ff"


def test_vote_keys() -> None:
    assert K.votes_prefix("team") == b"accord/ns/team/votes/"
    assert K.vote("team", "v1") == b"accord/ns/team/votes/v1"
    assert K.ballots_prefix("team", "v1") == b"accord/ns/team/ballots/v1\x00"
    assert K.ballot("team", "v1", "ada") == b"accord/ns/team/ballots/v1\x00ada"
    assert K.vote_timers_prefix == b"accord/vote-timers/"
    timer = K.vote_timer(0x123, "close", "team", "v1")
    assert timer == b"accord/vote-timers/0000000000000123\x00close\x00team\x00v1"
    assert K.parse_vote_timer(timer) == (0x123, "close", "team", "v1")
    for foreign in (b"accord/vote-timers/not-hex\x00a\x00b\x00c", b"accord/vote-timers/\xff"):
        assert K.parse_vote_timer(foreign) is None


def test_auth_keys() -> None:
    assert K.auth_prefix == b"accord/auth/"
    assert K.principals_prefix == b"accord/auth/principals/"
    assert K.principal("runtime-1") == b"accord/auth/principals/runtime-1"
    assert K.tokens_prefix == b"accord/auth/tokens/"
    assert K.token("AbCd_-0123456789") == b"accord/auth/tokens/AbCd_-0123456789"


def test_audit_keys() -> None:
    assert K.audit_prefix == b"accord/audit/"
    assert K.audit(0x187A2B3C4D5E6F70, "ab12") == b"accord/audit/187a2b3c4d5e6f70\x00ab12"


def test_root_is_configurable() -> None:
    assert Keyspace("other/root").kv("n", "k") == b"other/root/ns/n/kv/k"
