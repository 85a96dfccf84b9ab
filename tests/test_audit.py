"""The audit log: appends chain, listing filters, and verify names the first bad entry.

A realistic session is logged, then the file is damaged the ways that
matter (a byte altered, entries removed from the start, middle and end, two
swapped, a truncated last line, forged entries with recomputed hashes,
lines that are not entries) and verification must fail naming the entry or
line where the damage starts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from liftshift.daemon.audit import (
    GENESIS,
    AuditCorrupt,
    AuditEntry,
    AuditInUse,
    AuditLog,
    read_entries,
    redact,
    result_of,
    verify_file,
)
from liftshift.daemon.lifecycle import Event, IllegalTransition, State

PEER = "ipv4:10.0.0.7:51234"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 1.5
        return self.now


def _session(log: AuditLog) -> list[AuditEntry]:
    """Eight control actions an operator could well have issued."""
    refused = IllegalTransition(State.SYNCING, Event.CUTOVER)
    return [
        log.append("CN=ops-alice,O=example", PEER, "CreateMigration",
                   {"vms": ["web-1", "db-1"], "sink": "sink.cloud:7443", "vcenter_password": "hunter2"},
                   ["web-1", "db-1"], "ok"),
        log.append("CN=ops-alice,O=example", PEER, "StartMigration", {"migration_id": "m-1"},
                   ["web-1", "db-1"], "ok"),
        log.append("token:ci-pipeline", "ipv6:[::1]:40000", "Cutover",
                   {"migration_id": "m-1", "force": False, "window": {"max_downtime_s": 30.0, "note": "Ünïcode ok"}},
                   ["web-1", "db-1"], result_of(refused)),
        log.append("", "unix:/run/liftshift.sock", "ListMigrations", {}, [], "ok"),
        log.append("CN=ops-bob,O=example", PEER, "CreateMigration", {"vms": ["mail-1"], "sink": "sink.cloud:7443",
                                                                     "auth": {"api_token": "t0ps3cret"}},
                   ["mail-1"], "ok"),
        log.append("CN=ops-alice,O=example", PEER, "Cutover", {"migration_id": "m-1", "force": True},
                   ["web-1", "db-1"], "ok"),
        log.append("CN=ops-bob,O=example", PEER, "PauseMigration", {"migration_id": "m-2"}, ["mail-1"], "ok"),
        log.append("CN=ops-bob,O=example", PEER, "AbortMigration", {"migration_id": "m-2"}, ["mail-1"], "ok"),
    ]


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Path, list[AuditEntry]]]:
    """A closed audit.log holding the session, and its entries."""
    path = tmp_path / "audit.log"
    with AuditLog(path, clock=Clock()) as log:
        entries = _session(log)
        assert log.verify().ok
    yield path, entries


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _forge(entry: AuditEntry, **changes: object) -> bytes:
    """An entry line with its hash recomputed: what a forger who knows the format writes."""
    e = replace(entry, **changes)  # type: ignore[arg-type]
    return replace(e, hash=e.computed_hash()).to_line()


def test_a_session_is_logged_chained_and_hashed_as_specified(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, entries = logged
    assert [e.seq for e in entries] == list(range(1, 9))
    assert entries[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in zip(entries, entries[1:], strict=False))
    for raw, e in zip(_lines(path), entries, strict=True):
        d = json.loads(raw)
        assert list(d) == ["seq", "time", "who", "peer", "action", "params", "vms", "result", "prev", "hash"]
        body = {k: v for k, v in d.items() if k != "hash"}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=False).encode()).hexdigest()
        assert d["hash"] == digest == e.hash
    refused = entries[2]
    assert refused.result.startswith("IllegalTransition: cannot cutover a migration that is syncing")
    assert refused.params["window"] == {"max_downtime_s": 30.0, "note": "Ünïcode ok"}
    assert entries[3].who == "anonymous"
    # Secrets never reach the file, even when the caller forgot to redact.
    assert entries[0].params == {"vms": ["web-1", "db-1"], "sink": "sink.cloud:7443"}
    assert entries[4].params["auth"] == {}
    text = path.read_text()
    assert "hunter2" not in text and "t0ps3cret" not in text
    assert path.stat().st_mode & 0o077 == 0
    assert verify_file(path) == verify_file(path)
    assert verify_file(path).ok and verify_file(path).count == 8


def test_entries_filter_by_time_and_vm(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.log", clock=Clock()) as log:
        entries = _session(log)
        assert log.entries() == entries
        assert [e.seq for e in log.entries(since=entries[5].time)] == [6, 7, 8]
        assert [e.seq for e in log.entries(vm="mail-1")] == [5, 7, 8]
        assert [e.seq for e in log.entries(since=entries[2].time, vm="web-1")] == [3, 6]
        assert log.entries(vm="nope") == [] and log.entries(since=entries[-1].time + 1) == []
    assert read_entries(tmp_path / "audit.log", vm="db-1") == [entries[i] for i in (0, 1, 2, 5)]


def test_reopening_continues_the_chain(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, entries = logged
    with AuditLog(path) as log:
        assert log.last == (8, entries[-1].hash)
        e = log.append("CN=ops-alice,O=example", PEER, "ResumeMigration", {"migration_id": "m-2"}, ["mail-1"], "ok")
        assert (e.seq, e.prev) == (9, entries[-1].hash)
        assert log.verify().ok and log.verify().count == 9
        assert log.entries()[:8] == entries
    assert verify_file(path).count == 9


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.log"):
        with pytest.raises(AuditInUse):
            AuditLog(tmp_path / "audit.log")


def test_a_byte_altered_in_a_params_value_names_that_entry(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, _ = logged
    lines = _lines(path)
    lines[4] = lines[4].replace(b"sink.cloud", b"sink.cl0ud")
    _write(path, lines)
    r = verify_file(path)
    assert not r.ok and (r.first_bad_seq, r.line, r.count) == (5, 5, 4)
    assert r.reason == "entry 5: hash does not match its content (edited)"


@pytest.mark.parametrize("index", [2, 7])
def test_every_single_byte_alteration_is_caught_at_its_line(logged: tuple[Path, list[AuditEntry]], shm_dir: Path,
                                                            index: int) -> None:
    """Each byte of the line in turn, its low bit flipped: digits, letters, quotes, braces, the newline."""
    path, _ = logged
    head = shm_dir / "audit.head"
    head.write_bytes((path.parent / "audit.head").read_bytes())
    original = _lines(path)
    for pos in range(len(original[index])):
        lines = list(original)
        line = bytearray(lines[index])
        line[pos] ^= 0x01
        lines[index] = bytes(line)
        _write(shm_dir / "audit.log", lines)
        r = verify_file(shm_dir / "audit.log", head_path=head)
        assert not r.ok and r.line == index + 1 and r.first_bad_seq == index + 1, (pos, r)


def test_an_equivalent_rewrite_of_a_line_is_caught(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, _ = logged
    lines = _lines(path)
    lines[2] = lines[2].replace("Ü".encode(), b"\\u00dc")  # the same JSON value, other bytes
    _write(path, lines)
    r = verify_file(path)
    assert (r.ok, r.first_bad_seq) == (False, 3) and "edited" in r.reason


@pytest.mark.parametrize("index, reason", [
    (0, "entry 2 is the first entry: entry 1 is missing (removed)"),
    (4, "entry 6 follows entry 4: entry 5 is missing (removed)"),
])
def test_a_deleted_entry_is_named(logged: tuple[Path, list[AuditEntry]], index: int, reason: str) -> None:
    path, _ = logged
    lines = _lines(path)
    del lines[index]
    _write(path, lines)
    r = verify_file(path)
    assert not r.ok and r.reason == reason and r.first_bad_seq == index + 1


def test_deleted_entries_at_the_end_are_caught_by_the_head_record(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, entries = logged
    _write(path, _lines(path)[:-2])
    r = verify_file(path)
    assert not r.ok and r.first_bad_seq == 7 and r.count == 6
    assert r.reason.startswith("entries 7-8 are missing: the log ends at entry 6 but ")
    assert r.reason.endswith("audit.head records entry 8 (removed from the end)")
    # From the file alone the loss does not show: that is what the head is for.
    unchecked = verify_file(path, check_head=False)
    assert unchecked.ok and not unchecked.head_checked
    with AuditLog(path) as log:
        assert isinstance(log.refusal, AuditCorrupt)
        with pytest.raises(AuditCorrupt, match="ends at entry 6 but its head records entry 8"):
            log.append("x", PEER, "ListMigrations", {}, [], "ok")
        assert log.verify().first_bad_seq == 7


def test_a_last_entry_deleted_while_the_daemon_runs_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, clock=Clock()) as log:
        _session(log)
        _write(path, _lines(path)[:-1])
        r = log.verify()
        assert not r.ok and r.first_bad_seq == 8
        assert "entry 8 is missing: the log ends at entry 7" in r.reason


def test_a_missing_head_record_fails_verification_and_refuses_appends(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, _ = logged
    (path.parent / "audit.head").unlink()
    r = verify_file(path)
    assert not r.ok and "audit.head is missing" in r.reason
    with AuditLog(path) as log, pytest.raises(AuditCorrupt, match="is missing"):
        log.append("x", PEER, "ListMigrations", {}, [], "ok")


@pytest.mark.parametrize("i, j", [(3, 4), (1, 6)])
def test_two_swapped_entries_name_the_first_out_of_place(logged: tuple[Path, list[AuditEntry]],
                                                         i: int, j: int) -> None:
    path, _ = logged
    lines = _lines(path)
    lines[i], lines[j] = lines[j], lines[i]
    _write(path, lines)
    r = verify_file(path)
    assert not r.ok and (r.first_bad_seq, r.line) == (j + 1, i + 1)
    assert r.reason == f"entry {j + 1} at line {i + 1} comes before entry {i + 1} at line {j + 1}: " \
                       "out of order (reordered)"


def test_an_entry_moved_later_is_out_of_order(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, _ = logged
    lines = _lines(path)
    lines.insert(6, lines.pop(2))  # entry 3 now sits after entry 7
    _write(path, lines)
    r = verify_file(path)
    assert not r.ok and r.first_bad_seq == 4 and "entry 4 at line 3 comes before entry 3 at line 7" in r.reason


def test_a_truncated_last_line_is_caught_and_refuses_appends(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, _ = logged
    original = _lines(path)
    lines = original[:-1] + [original[-1][:57]]
    _write(path, lines)
    r = verify_file(path)
    assert not r.ok and (r.first_bad_seq, r.line) == (8, 8) and r.reason.startswith("line 8: truncated")
    with AuditLog(path) as log, pytest.raises(AuditCorrupt, match="ends with a truncated line"):
        log.append("x", PEER, "ListMigrations", {}, [], "ok")
    # A complete entry without its newline is a truncation too (an interrupted write).
    _write(path, original[:-1] + [original[-1][:-1]])
    r = verify_file(path)
    assert not r.ok and (r.first_bad_seq, r.line) == (8, 8) and r.reason.startswith("line 8: truncated")


def test_a_forged_insertion_breaks_the_chain_at_the_next_entry(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, entries = logged
    lines = _lines(path)
    # A forged entry 5 that chains onto entry 4 with a valid hash, before the real entry 5.
    lines.insert(4, _forge(entries[4], who="CN=ops-alice,O=example", action="DeleteMigration"))
    _write(path, lines)
    r = verify_file(path)
    assert not r.ok and (r.first_bad_seq, r.line) == (5, 6)
    assert "entry 5 at line 6 repeats entry 5 of line 5: an entry was inserted (forged)" in r.reason


def test_a_forged_replacement_breaks_the_chain_at_the_next_entry(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, entries = logged
    lines = _lines(path)
    lines[4] = _forge(entries[4], vms=("mail-2",))
    _write(path, lines)
    r = verify_file(path)
    assert not r.ok and (r.first_bad_seq, r.line) == (6, 6)
    assert r.reason == "entry 6: prev does not match the hash of entry 5 (an entry replaced, removed or reordered)"


def test_a_forged_entry_at_the_end_is_caught_by_the_head_record(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, entries = logged
    forged = _forge(entries[-1], seq=9, prev=entries[-1].hash, action="DeleteMigration")
    _write(path, _lines(path) + [forged])
    r = verify_file(path)
    assert not r.ok and r.first_bad_seq == 9 and "entry 9 is not covered by" in r.reason
    # Replacing the last entry itself is caught by the head's hash.
    _write(path, _lines(path)[:-2] + [_forge(entries[-1], result="ok, honest")])
    r = verify_file(path)
    assert not r.ok and r.first_bad_seq == 8 and "entry 8: hash does not match" in r.reason


def test_entries_past_the_head_are_adopted_at_start_up_and_recorded(logged: tuple[Path, list[AuditEntry]]) -> None:
    """The daemon died after syncing entry 9 but before replacing the head."""
    path, entries = logged
    head = (path.parent / "audit.head").read_bytes()
    with AuditLog(path) as log:
        nine = log.append("CN=ops-bob,O=example", PEER, "StartMigration", {"migration_id": "m-3"}, ["x"], "ok")
    (path.parent / "audit.head").write_bytes(head)
    assert "entry 9 is not covered" in verify_file(path).reason
    with AuditLog(path) as log:
        assert log.refusal is None
        note = log.entries()[-1]
        assert (note.seq, note.prev, note.action, note.who) == (10, nine.hash, "AuditHeadAdvanced", "liftshift-daemon")
        assert (note.params["from_seq"], note.params["to_seq"]) == (8, 9)
        assert log.verify().ok
    assert verify_file(path).count == 10


@pytest.mark.parametrize("line, why", [
    (b"not json at all\n", "line 4: not an audit entry (not JSON: "),
    (b"\n", "line 4: not an audit entry (not JSON: "),
    (b"[1, 2]\n", "line 4: not an audit entry (a JSON list, not an object)"),
    (b"\xff\xfe\n", "line 4: not an audit entry (not UTF-8)"),
    (b'{"seq": NaN}\n', "line 4: not an audit entry (not JSON: NaN is not JSON)"),
])
def test_lines_that_are_not_entries_are_named(logged: tuple[Path, list[AuditEntry]], line: bytes, why: str) -> None:
    path, _ = logged
    lines = _lines(path)
    lines.insert(3, line)
    _write(path, lines)
    r = verify_file(path)
    assert not r.ok and (r.first_bad_seq, r.line) == (4, 4) and r.reason.startswith(why)
    with pytest.raises(AuditCorrupt, match="line 4: not an audit entry"):
        read_entries(path)


def test_unknown_missing_and_mistyped_keys_are_named(logged: tuple[Path, list[AuditEntry]]) -> None:
    path, _ = logged
    original = _lines(path)
    for change, why in [
        (lambda d: d | {"extra": 1}, "unknown extra"),
        (lambda d: {k: v for k, v in d.items() if k != "result"}, "missing result"),
        (lambda d: d | {"seq": "3"}, "bad seq"),
        (lambda d: d | {"vms": "web-1"}, "bad vms"),
        (lambda d: d | {"prev": "XYZ"}, "bad prev"),
    ]:
        lines = list(original)
        lines[2] = json.dumps(change(json.loads(lines[2]))).encode() + b"\n"
        _write(path, lines)
        r = verify_file(path)
        assert not r.ok and r.line == 3 and r.reason.startswith("line 3: not an audit entry (") and why in r.reason


def test_concurrent_appends_are_contiguous_and_verifiable_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    verified: list[bool] = []
    with AuditLog(path) as log:
        genesis_head = (tmp_path / "audit.head").read_bytes()
        done = threading.Event()

        def appender(t: int) -> None:
            for i in range(200):
                log.append(f"CN=thread-{t}", PEER, "SetThrottle", {"i": i, "rate": 10 * i}, [f"vm-{t}"], "ok")

        def verifier() -> None:
            while True:
                verified.append(log.verify().ok)
                if done.wait(0.1):  # not back to back: appenders need the GIL too
                    return

        threads = [threading.Thread(target=appender, args=(t,)) for t in range(4)]
        checker = threading.Thread(target=verifier)
        checker.start()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        done.set()
        checker.join()
        entries = log.entries()
        assert [e.seq for e in entries] == list(range(1, 801))
        for t in range(4):  # each thread's entries in the order it appended them
            assert [e.params["i"] for e in log.entries(vm=f"vm-{t}")] == list(range(200))
        assert log.verify().ok and log.last == (800, entries[-1].hash)
    assert verified and all(verified)
    assert verify_file(path).count == 800
    with AuditLog(path) as log:
        assert log.last == (800, entries[-1].hash)
    # A head as old as the log: reopening walks the whole tail back (several reads) and adopts it.
    (tmp_path / "audit.head").write_bytes(genesis_head)
    with AuditLog(path) as log:
        note = log.entries()[-1]
        assert (note.seq, note.action, note.params["from_seq"], note.params["to_seq"]) == \
            (801, "AuditHeadAdvanced", 0, 800)
    assert verify_file(path).count == 801


def test_redact_drops_secret_keys_and_plainifies_values() -> None:
    value = {"Password": "x", "sink-token": "y", "client_secret": "z", "TLS": {"private_key": "k", "ca": "c"},
             "nested": [{"apiKey": "a", "ok": 1}], "raw": b"\x00" * 3, "inf": float("inf"), "t": (1, 2), 3: None}
    assert redact(value) == {"TLS": {"ca": "c"}, "nested": [{"ok": 1}], "raw": "<3 bytes>", "inf": "inf",
                             "t": [1, 2], "3": None}


def test_result_of_names_the_error() -> None:
    assert result_of(None) == "ok"
    assert result_of(ValueError("boom")) == "ValueError: boom"
    err = IllegalTransition(State.CREATED, Event.CUTOVER)
    assert result_of(err) == f"IllegalTransition: {err.message}"
