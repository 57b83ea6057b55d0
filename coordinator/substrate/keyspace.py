"""Every etcd key Accord writes, in one place.

These bytes are persisted data: changing one strands what is already stored. Keys are
text joined by "/" and NUL (NUL never occurs in names: limits.check_key refuses control
characters), under a configurable root:

  {root}/ns/{ns}/kv/{key}                            StoredValue                    (kv)
  {root}/ns/{ns}/tomb/{key}                          Tombstone, retention lease     (kv)
  {root}/ns/{ns}/idem/{agent}\\0{request_id}          IdempotencyRecord, retention   (writes)
  {root}/ns/{ns}/leases/{lease:016x}                 LeaseRecord, on the lease      (leases)
  {root}/ns/{ns}/locks/{lock}\\0{lease:016x}          LockEntryRecord, on the lease  (locks)
  {root}/ns/{ns}/deadlocks/{lock}\\0{lease:016x}\\0{token:016x}
                                                     Deadlock, retention lease      (locks)
  {root}/ns/{ns}/handoffs/{lock}                     TraceContext of the last traced
                                                     release, retention lease       (locks)
  {root}/ns/{ns}/sessions/{name}                     SessionRecord                  (sessions)
  {root}/ns/{ns}/sdata/{name}\\0{incarnation:016x}\\0  one session's data (SessionData)
      alive | log\\0{id} | trace\\0{id} | snap\\0{rev:016x}\\0{sha}\\0{i} | presence\\0{client:08x}
  {root}/ns/{ns}/votes/{id}                          Vote record                    (votes)
  {root}/ns/{ns}/ballots/{id}\\0{agent}               Ballot                         (votes)
  {root}/ns/{ns}/effects/{key}                       Effect, effects retention      (effects)
  {root}/ns/{ns}/runs/{run}\\0 + one of (RunKeys)     one run's keys                 (effects)
      r | j\\0{key} | c\\0{key} | o|a|s|f\\0{key} | x\\0{began:016x}\\0{key} | k\\0{key} | y\\0{key}
  {root}/vote-timers/{due_ms:016x}\\0{kind}\\0{ns}\\0{id}  empty: a deadline or expiry (votes)
  {root}/auth/principals/{name}                      PrincipalRecord                (auth)
  {root}/auth/tokens/{token id}                      TokenRecord                    (auth)
  {root}/audit/{at_ns:016x}\\0{nonce}                 AuditEntry, retention lease    (audit)
  {root}/quotas/{ns}                                 QuotaLimits overrides          (quotas)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionData:
    """The keys of one incarnation of one session."""

    prefix: bytes

    @property
    def alive(self) -> bytes:
        """Written at creation, deleted with the session."""
        return self.prefix + b"alive"

    def log(self, entry_id: str) -> bytes:
        return self.prefix + b"log\x00" + entry_id.encode()

    def trace(self, entry_id: str) -> bytes:
        """The trace context of the call that wrote log entry entry_id (written just
        before it, on the retention lease; only when that call sent one)."""
        return self.prefix + b"trace\x00" + entry_id.encode()

    def snapshot(self, revision: int) -> bytes:
        """The prefix of the snapshot chunks covering every update up to revision."""
        return self.prefix + f"snap\x00{revision:016x}\x00".encode()

    def presence(self, client_id: int) -> bytes:
        return self.prefix + f"presence\x00{client_id:08x}".encode()


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The keys of one run of the effect ledger (effects/keys.py says what each holds)."""

    prefix: bytes

    @property
    def record(self) -> bytes:
        return self.prefix + b"r"

    def _of(self, kind: bytes, tail: str = "") -> bytes:
        return self.prefix + kind + b"\x00" + tail.encode()

    def journal(self, key: str = "") -> bytes:
        return self._of(b"j", key)

    def claim(self, key: str = "") -> bytes:
        return self._of(b"c", key)

    def marker(self, kind: bytes, key: str = "") -> bytes:
        """kind: o (open), a (aborted), s (succeeded), f (failed)."""
        return self._of(kind, key)

    def compensation(self, began_revision: int | None = None, key: str = "") -> bytes:
        """Ordered as the journal: by the compensated effect's began revision, then key
        (effects begun in one group-commit batch share a revision)."""
        return self._of(b"x", "" if began_revision is None else f"{began_revision:016x}\x00{key}")

    def compensation_key(self, key: str = "") -> bytes:
        return self._of(b"k", key)

    def compensated(self, key: str = "") -> bytes:
        return self._of(b"y", key)


@dataclass(frozen=True, slots=True)
class Keyspace:
    root: str

    def _ns(self, namespace: str, kind: str) -> str:
        return f"{self.root}/ns/{namespace}/{kind}/"

    @property
    def namespaces_prefix(self) -> bytes:
        """Everything every namespace holds (quotas count it from one watch)."""
        return f"{self.root}/ns/".encode()

    # --- kv ------------------------------------------------------------------------

    def kv_prefix(self, namespace: str) -> bytes:
        return self._ns(namespace, "kv").encode()

    def kv(self, namespace: str, key: str) -> bytes:
        return (self._ns(namespace, "kv") + key).encode()

    def tomb(self, namespace: str, key: str) -> bytes:
        return (self._ns(namespace, "tomb") + key).encode()

    # --- at-most-once records --------------------------------------------------------

    def idem(self, namespace: str, agent: str, request_id: str) -> bytes:
        return (self._ns(namespace, "idem") + f"{agent}\x00{request_id}").encode()

    # --- leases ----------------------------------------------------------------------

    def leases_prefix(self, namespace: str) -> bytes:
        return self._ns(namespace, "leases").encode()

    def lease(self, namespace: str, lease_id: int) -> bytes:
        return (self._ns(namespace, "leases") + f"{lease_id:016x}").encode()

    # --- locks and deadlocks ------------------------------------------------------------

    def locks_prefix(self, namespace: str) -> bytes:
        return self._ns(namespace, "locks").encode()

    def lock_queue(self, namespace: str, name: str) -> bytes:
        return self.locks_prefix(namespace) + name.encode() + b"\x00"

    def lock_entry(self, namespace: str, name: str, lease_id: int) -> bytes:
        return self.lock_queue(namespace, name) + f"{lease_id:016x}".encode()

    def parse_lock_entry(self, namespace: str, key: bytes) -> tuple[str, int] | None:
        """(lock name, lease id) of a lock entry key; None for any other key."""
        prefix = self.locks_prefix(namespace)
        if not key.startswith(prefix) or b"\x00" not in key:
            return None
        name, _, lease = key[len(prefix) :].rpartition(b"\x00")
        return name.decode("utf-8", "replace"), int(lease, 16)

    def lock_handoff(self, namespace: str, name: str) -> bytes:
        """The trace context of the lock's latest release that sent one."""
        return (self._ns(namespace, "handoffs") + name).encode()

    def deadlocks_prefix(self, namespace: str) -> bytes:
        return self._ns(namespace, "deadlocks").encode()

    def deadlock(self, namespace: str, entry_key: bytes, token: int) -> bytes:
        """The verdict on the wait of the lock entry at entry_key with that token."""
        tail = entry_key[len(self.locks_prefix(namespace)) :]
        return self.deadlocks_prefix(namespace) + tail + f"\x00{token:016x}".encode()

    # --- sessions -----------------------------------------------------------------------

    def sessions_prefix(self, namespace: str) -> bytes:
        return self._ns(namespace, "sessions").encode()

    def session(self, namespace: str, name: str) -> bytes:
        return (self._ns(namespace, "sessions") + name).encode()

    def session_data(self, namespace: str, name: str, incarnation: int) -> SessionData:
        return SessionData(
            (self._ns(namespace, "sdata") + f"{name}\x00{incarnation:016x}\x00").encode()
        )

    # --- votes ----------------------------------------------------------------------------

    def votes_prefix(self, namespace: str) -> bytes:
        return self._ns(namespace, "votes").encode()

    def vote(self, namespace: str, vote_id: str) -> bytes:
        return (self._ns(namespace, "votes") + vote_id).encode()

    def ballots_prefix(self, namespace: str, vote_id: str) -> bytes:
        return (self._ns(namespace, "ballots") + f"{vote_id}\x00").encode()

    def ballot(self, namespace: str, vote_id: str, agent: str) -> bytes:
        return self.ballots_prefix(namespace, vote_id) + agent.encode()

    @property
    def vote_timers_prefix(self) -> bytes:
        return f"{self.root}/vote-timers/".encode()

    def vote_timer(self, due_ms: int, kind: str, namespace: str, vote_id: str) -> bytes:
        tail = f"{due_ms:016x}\x00{kind}\x00{namespace}\x00{vote_id}"
        return self.vote_timers_prefix + tail.encode()

    def parse_vote_timer(self, key: bytes) -> tuple[int, str, str, str] | None:
        """(due in ms, kind, namespace, vote id) of a vote timer key; None for a key that
        is not one (written around Accord)."""
        try:
            due, kind, namespace, vote_id = (
                key[len(self.vote_timers_prefix) :].decode().split("\x00", 3)
            )
            return int(due, 16), kind, namespace, vote_id
        except ValueError:  # also a UnicodeDecodeError
            return None

    # --- effects -------------------------------------------------------------------------

    def effects_prefix(self, namespace: str) -> bytes:
        return self._ns(namespace, "effects").encode()

    def effect(self, namespace: str, key: str) -> bytes:
        return (self._ns(namespace, "effects") + key).encode()

    def run(self, namespace: str, run_id: str) -> RunKeys:
        return RunKeys((self._ns(namespace, "runs") + run_id + "\x00").encode())

    # --- auth (cluster-wide, not per namespace) ------------------------------------------

    @property
    def auth_prefix(self) -> bytes:
        """Everything auth keeps: every replica reads it once and follows it by a watch."""
        return f"{self.root}/auth/".encode()

    @property
    def principals_prefix(self) -> bytes:
        return self.auth_prefix + b"principals/"

    def principal(self, name: str) -> bytes:
        return self.principals_prefix + name.encode()

    @property
    def tokens_prefix(self) -> bytes:
        return self.auth_prefix + b"tokens/"

    def token(self, token_id: str) -> bytes:
        return self.tokens_prefix + token_id.encode()

    # --- the audit log -----------------------------------------------------------------

    @property
    def audit_prefix(self) -> bytes:
        return f"{self.root}/audit/".encode()

    def audit(self, at_ns: int, nonce: str) -> bytes:
        """Ordered by wall-clock time in nanoseconds (then a random nonce): a range read
        lists the log in order."""
        return self.audit_prefix + f"{at_ns:016x}\x00{nonce}".encode()

    # --- quotas --------------------------------------------------------------------------

    @property
    def quotas_prefix(self) -> bytes:
        return f"{self.root}/quotas/".encode()

    def quota(self, namespace: str) -> bytes:
        """A namespace's quota overrides (absent: the replicas' defaults)."""
        return self.quotas_prefix + namespace.encode()
