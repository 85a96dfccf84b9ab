"""liftshift-nbd against real NBD clients (qemu-io, qemu-img, fio, nbdinfo) and
a raw-socket client for what real clients never send.

Every test starts the server as a process (``python -m liftshift.iofilter.nbd``)
on a fresh image and, where it captures, a fresh ring.  The central check is
the replay: applying the ring's records, in order, to a copy of the image as
it was before the test must give exactly the final image.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cbuild import c_library
from nbdclient import NbdClient, connect
from procs import DaemonProcess, python_module
from tooling import file_digest, require_tool

from liftshift.iofilter import FLAG_CLOSE, FLAG_TRIM, FLAG_WRITE, CorruptRecord, Record, RingConsumer, create_ring
from liftshift.iofilter import nbdproto as P

KiB = 1 << 10
MiB = 1 << 20
SIZE = 8 * MiB
START_TIMEOUT_S = 20.0


# -- harness ------------------------------------------------------------------


class Nbd:
    """A running liftshift-nbd with its image, its ring and the image's copy from before."""

    def __init__(self, proc: DaemonProcess, image: Path, ring: Path | None, before: Path, unix: Path | None) -> None:
        self.proc = proc
        self.image = image
        self.ring = ring
        self.before = before
        self.unix = unix

    @property
    def address(self) -> tuple[str, int] | str:
        return str(self.unix) if self.unix else ("127.0.0.1", self.proc.port)

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.unix}" if self.unix else f"nbd://127.0.0.1:{self.proc.port}/"

    def client(self, **kw: object) -> NbdClient:
        return connect(self.address, **kw)  # type: ignore[arg-type]

    def commit(self) -> int:
        assert self.ring is not None
        with RingConsumer(self.ring) as c:
            return c.commit_pos()

    def control(self, **kw: object) -> None:
        assert self.ring is not None
        with RingConsumer(self.ring) as c:
            c.set_control(**kw)  # type: ignore[arg-type]

    def counters(self) -> dict[str, int]:
        assert self.ring is not None
        with RingConsumer(self.ring) as c:
            return c.counters()


def make_image(path: Path, seed: int = 1, size: int = SIZE) -> None:
    """Random data in the first half, a hole in the second."""
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(size // 2))
        f.truncate(size)


def spawn(args: list[str], port_file: Path, log: Path, cleanup: Callable[[Callable[[], object]], object],
          *, wait_for: Path | None = None) -> DaemonProcess:
    """Start liftshift-nbd and wait for its port file (or ``wait_for``)."""
    port_file.unlink(missing_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(python_module("liftshift.iofilter.nbd", *args, "--port-file", port_file),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    handle = DaemonProcess(proc, 0, log, "127.0.0.1")
    cleanup(handle.stop)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"liftshift-nbd exited with {proc.returncode}:\n{handle.log()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"liftshift-nbd wrote no port file within {START_TIMEOUT_S:.0f} s:\n{handle.log()}")
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text:
            break
        time.sleep(0.02)
    if wait_for is None:
        handle.port = int(text)
    return handle


@pytest.fixture(params=["c", "python"])
def nbd(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Nbd]]:
    """Factory: ``nbd(ring=True, unix=False, extra=(...), capacity=...)`` -> a started server.

    Every test runs twice: with plain writes served in C (``liftshift_nbd.c``,
    which the server's log must confirm) and with ``LIFTSHIFT_NBD_WRITES=python``.
    At the end every server must stop on SIGTERM with status 0 and no traceback in its log.
    """
    path = "plain writes in C" if request.param == "c" else "plain writes in Python"
    if request.param == "c":
        monkeypatch.setenv("LIFTSHIFT_RING_LIB", str(c_library()))
        monkeypatch.delenv("LIFTSHIFT_NBD_WRITES", raising=False)
        monkeypatch.delenv("LIFTSHIFT_RING_PRODUCER", raising=False)
    else:
        monkeypatch.setenv("LIFTSHIFT_NBD_WRITES", "python")
    count = 0
    started: list[Nbd] = []

    def start(*, ring: bool = True, unix: bool = False, extra: tuple[str, ...] = (), capacity: int = 32 * MiB,
              image: Path | None = None, ring_path: Path | None = None) -> Nbd:
        nonlocal count
        count += 1
        if image is None:
            image = tmp_path / f"disk{count}.img"
            make_image(image, seed=count)
        before = tmp_path / f"{image.name}.before"
        shutil.copyfile(image, before)
        rp = ring_path
        if ring and rp is None:
            rp = shm_dir / f"disk{count}.ring"
            create_ring(rp, image.stat().st_size, capacity=capacity)
        args = ["--image", str(image), *extra]
        if rp is not None:
            args += ["--ring", str(rp)]
        sock = tmp_path / f"nbd{count}.sock" if unix else None
        args += ["--unix", str(sock)] if sock else ["--listen", "127.0.0.1:0"]
        proc = spawn(args, tmp_path / f"nbd{count}.port", tmp_path / f"nbd{count}.log", request.addfinalizer,
                     wait_for=sock)
        started.append(Nbd(proc, image, rp, before, sock))
        deadline = time.monotonic() + START_TIMEOUT_S  # with --unix the socket can come before the log line
        while path not in proc.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path in proc.log(), proc.log()
        return started[-1]

    yield start
    for n in started:
        assert n.proc.stop() == 0, n.proc.log()
        assert "Traceback" not in n.proc.log(), n.proc.log()


def read_ring(ring: Path) -> list[Record]:
    """Every record from the ring's release position on (payloads stay valid after)."""
    out: list[Record] = []
    with RingConsumer(ring) as c:
        while batch := c.read(16 * MiB):
            for r in batch:
                assert not isinstance(r, CorruptRecord), r
                out.append(r)
    return out


def replay(nbd: Nbd, out: Path) -> list[Record]:
    """Apply the ring's records to the image as it was before; return them."""
    assert nbd.ring is not None
    shutil.copyfile(nbd.before, out)
    records = read_ring(nbd.ring)
    with open(out, "r+b") as f:
        for r in records:
            if r.flags & FLAG_CLOSE:
                continue
            f.seek(r.offset)
            f.write(bytes(r.payload) if r.flags & FLAG_WRITE else bytes(r.length))
    return records


def assert_replay_matches(nbd: Nbd, tmp_path: Path) -> list[Record]:
    records = replay(nbd, tmp_path / "replayed.img")
    assert nbd.counters()["overflows"] == 0, "the ring overflowed: records alone cannot rebuild the image"
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert file_digest(tmp_path / "replayed.img") == file_digest(nbd.image), "ring replay differs from the image"
    return records


def qemu_io(uri: str, *commands: str) -> tuple[int, str]:
    args = [require_tool("qemu-io"), "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    p = subprocess.run([*args, uri], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def qemu_io_ok(uri: str, *commands: str) -> str:
    rc, out = qemu_io(uri, *commands)
    assert rc == 0 and "failed" not in out and "error" not in out.lower(), out
    return out


def fio(uri: str, *args: str) -> dict:
    cmd = [require_tool("fio"), "--name=t", "--ioengine=nbd", f"--uri={uri}", "--output-format=json", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0]


# -- real clients -----------------------------------------------------------------


def test_qemu_io_patterns_reach_image_and_ring(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    s = nbd()
    model = bytearray(s.before.read_bytes())
    qemu_io_ok(s.uri,
               "write -P 0xab 0 64k",
               "write -z 1M 128k",  # WRITE_ZEROES with NO_HOLE
               "write -z -u 3M 64k",  # WRITE_ZEROES, may punch a hole
               "discard 2M 64k",
               "aio_write -P 0x21 5M 64k", "aio_write -P 0x22 5184k 64k", "aio_write -P 0x23 6M 4k",
               "aio_flush",
               "write -P 0x77 7340132 1000",  # unaligned: the client reads-modifies-writes
               "read -P 0xab 0 64k", "read -P 0 1M 128k", "read -P 0 2M 64k", "read -P 0x22 5184k 64k")
    for off, length, byte in ((0, 64 * KiB, 0xAB), (MiB, 128 * KiB, 0), (3 * MiB, 64 * KiB, 0),
                              (2 * MiB, 64 * KiB, 0), (5 * MiB, 64 * KiB, 0x21), (5184 * KiB, 64 * KiB, 0x22),
                              (6 * MiB, 4 * KiB, 0x23), (7340132, 1000, 0x77)):
        model[off : off + length] = bytes([byte]) * length
    assert s.image.read_bytes() == bytes(model)
    records = assert_replay_matches(s, tmp_path)
    assert {r.flags for r in records} == {1, 2, 4}  # WRITE, ZERO and TRIM records all present


def test_qemu_io_over_unix_socket(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    s = nbd(unix=True)
    qemu_io_ok(s.uri, "write -P 0x5c 4M 256k", "aio_write -P 0x5d 0 4k", "aio_write -P 0x5e 8k 4k", "aio_flush",
               "read -P 0x5c 4M 256k", "read -P 0x5e 8k 4k")
    assert_replay_matches(s, tmp_path)


def test_qemu_img_convert_into_export(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    s = nbd()
    src = tmp_path / "src.img"
    make_image(src, seed=99)
    with open(src, "r+b") as f:  # a zero run in the middle of the data
        f.seek(MiB)
        f.write(bytes(MiB))
    p = subprocess.run([require_tool("qemu-img"), "convert", "-n", "-f", "raw", "-O", "raw", str(src), s.uri],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([require_tool("qemu-img"), "compare", "-f", "raw", "-F", "raw", str(src), str(s.image)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert_replay_matches(s, tmp_path)


def test_fio_randwrite_is_captured_completely(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    s = nbd()
    job = fio(s.uri, "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=4M", "--rate_iops=4000")
    assert job["write"]["total_ios"] == 1024
    records = assert_replay_matches(s, tmp_path)
    assert sum(1 for r in records if r.flags == FLAG_WRITE) == 1024


def test_nbdcopy_over_several_connections(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    """CAN_MULTI_CONN is advertised: nbdcopy writes through several connections at once."""
    s = nbd()
    src = tmp_path / "src.img"
    make_image(src, seed=42)
    p = subprocess.run([require_tool("nbdcopy"), "--connections=4", "--threads=4", "--requests=8", "--flush",
                        str(src), s.uri], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert file_digest(s.image) == file_digest(src)
    assert_replay_matches(s, tmp_path)
    assert s.proc.log().count("connected to export") >= 2


def test_nbdinfo_lists_and_describes_the_export(nbd: Callable[..., Nbd]) -> None:
    s = nbd(ring=False, extra=("--export", "disk0"))
    nbdinfo = require_tool("nbdinfo")
    listed = json.loads(subprocess.run([nbdinfo, "--json", "--list", s.uri], capture_output=True, text=True,
                                       timeout=30, check=True).stdout)
    assert [(e["export-name"], e["export-size"]) for e in listed["exports"]] == [("disk0", SIZE)]
    info = json.loads(subprocess.run([nbdinfo, "--json", s.uri.rstrip("/") + "/disk0"], capture_output=True,
                                     text=True, timeout=30, check=True).stdout)
    e = info["exports"][0]
    assert e["export-size"] == SIZE and e["can_trim"] and e["can_zero"] and e["can_fua"] and e["can_flush"]
    assert (e["block_size_minimum"], e["block_size_preferred"], e["block_size_maximum"]) == (512, 4096, 32 * MiB)
    assert not info["structured"]


def test_handshake_options_raw(nbd: Callable[..., Nbd]) -> None:
    s = nbd(ring=False, extra=("--export", "disk0"))
    c = s.client(go=False)
    assert c.hello() == P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES
    assert c.option(P.OPT_STRUCTURED_REPLY)[-1][0] == P.REP_ERR_UNSUP  # structured replies declined
    assert c.option(P.OPT_STARTTLS)[-1][0] == P.REP_ERR_UNSUP
    assert c.option(99, b"xyz")[-1][0] == P.REP_ERR_UNSUP
    assert c.option(P.OPT_LIST, b"junk")[-1][0] == P.REP_ERR_INVALID
    assert c.option(P.OPT_INFO, b"\x00\x00\x00\x09ab")[-1][0] == P.REP_ERR_INVALID
    assert c.go("nosuch", opt=P.OPT_INFO)[-1][0] == P.REP_ERR_UNKNOWN
    listed = c.option(P.OPT_LIST)
    assert listed == [(P.REP_SERVER, struct.pack(">I", 5) + b"disk0"), (P.REP_ACK, b"")]
    replies = c.go("disk0", infos=(P.INFO_NAME,), opt=P.OPT_INFO)
    assert (P.REP_INFO, struct.pack(">H", P.INFO_NAME) + b"disk0") in replies and c.size == SIZE
    assert c.go("disk0")[-1][0] == P.REP_ACK  # GO: transmission from here
    assert c.tflags & P.TFLAG_SEND_TRIM and not c.tflags & P.TFLAG_READ_ONLY
    assert c.call(P.CMD_READ, 0, 512).data == s.before.read_bytes()[:512]
    c.disconnect()
    # NBD_OPT_EXPORT_NAME with the empty (default) name, zeroes not suppressed
    c = s.client(go=False)
    c.hello(client_flags=P.FLAG_C_FIXED_NEWSTYLE)
    c.send(P.OPTION_HEADER.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, 0))
    size, tflags = P.EXPORT_NAME_REPLY.unpack(c.recv_exactly(P.EXPORT_NAME_REPLY.size))
    assert (size, c.recv_exactly(124)) == (SIZE, bytes(124))
    assert c.call(P.CMD_FLUSH).error == 0
    c.disconnect()
    # an unknown name on EXPORT_NAME can only be answered by closing; ABORT is acknowledged
    c = s.client(go=False)
    c.hello()
    c.send(P.OPTION_HEADER.pack(P.IHAVEOPT, P.OPT_EXPORT_NAME, 3) + b"bad")
    assert c.is_closed()
    c = s.client(go=False)
    c.hello()
    assert c.option(P.OPT_ABORT) == [(P.REP_ACK, b"")]
    assert c.is_closed()


# -- the ring's control words ---------------------------------------------------------


def test_freeze_refuses_writes_without_touching_the_image(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    s = nbd()
    qemu_io_ok(s.uri, "write -P 0x11 0 64k")
    s.control(freeze=True)
    digest, commit = file_digest(s.image), s.commit()
    rc, out = qemu_io(s.uri, "write -P 0xcd 0 4k", "write -z 1M 64k", "discard 2M 64k")
    assert out.count("failed") == 3, out
    qemu_io_ok(s.uri, "read -P 0x11 0 64k")  # reads still work
    assert (file_digest(s.image), s.commit()) == (digest, commit)
    assert s.counters()["frozen_rejects"] == 3
    c = s.client()  # the NBD error is EIO
    assert c.call(P.CMD_WRITE, 0, 4096).error == P.EIO
    c.disconnect()
    s.control(freeze=False)
    qemu_io_ok(s.uri, "write -P 0xcd 0 4k", "read -P 0xcd 0 4k")
    assert_replay_matches(s, tmp_path)


def test_throttle_caps_the_write_rate(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    s = nbd()
    cap = 100
    s.control(throttle_iops=cap)
    job = fio(s.uri, "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=4M", "--number_ios=40")
    assert job["write"]["total_ios"] == 40
    assert job["write"]["iops"] <= 1.5 * cap, job["write"]["iops"]
    assert s.counters()["throttled_ns"] > 0
    assert_replay_matches(s, tmp_path)


def test_sigterm_answers_inflight_requests_and_leaves_the_ring_open(nbd: Callable[..., Nbd]) -> None:
    s = nbd()
    s.control(throttle_iops=40)  # ten writes take ~0.25 s: still in flight at SIGTERM
    c = s.client()
    handles = {c.request(P.CMD_WRITE, i * 64 * KiB, 64 * KiB, payload=bytes([i + 1]) * (64 * KiB))
               for i in range(10)}
    handles.add(c.request(P.CMD_FLUSH))
    time.sleep(0.1)  # let the server read them
    s.proc.proc.send_signal(signal.SIGTERM)
    replies = [c.reply() for _ in handles]
    assert {r.handle for r in replies} == handles and all(r.error == 0 for r in replies)
    assert c.is_closed()
    assert s.proc.proc.wait(10) == 0
    records = read_ring(s.ring)  # type: ignore[arg-type]
    assert [r.flags for r in records] == [FLAG_WRITE] * 10  # no CLOSE without --close-on-exit
    data = s.image.read_bytes()
    assert all(data[i * 64 * KiB] == i + 1 for i in range(10))


def test_close_on_exit_then_a_closed_ring_refuses_writes(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    s = nbd(extra=("--close-on-exit",))
    c = s.client()
    assert c.call(P.CMD_WRITE, 0, 4096).error == 0
    c.disconnect()
    assert s.proc.stop() == 0
    assert [r.flags for r in read_ring(s.ring)] == [FLAG_WRITE, FLAG_CLOSE]  # type: ignore[arg-type]
    again = nbd(image=s.image, ring_path=s.ring)
    digest, commit = file_digest(again.image), again.commit()
    c = again.client()
    assert c.call(P.CMD_WRITE, 8192, 4096).error == P.EPERM
    assert c.call(P.CMD_TRIM, 8192, 4096).error == P.EPERM
    assert c.call(P.CMD_READ, 0, 4096).data == b"\x5a" * 4096
    c.disconnect()
    assert (file_digest(again.image), again.commit()) == (digest, commit)


# -- pipelining and order -----------------------------------------------------------


def test_pipelined_overlapping_writes_are_published_in_image_order(nbd: Callable[..., Nbd], tmp_path: Path) -> None:
    s = nbd()
    rng = random.Random(7)
    model = bytearray(s.before.read_bytes())
    c = s.client()
    sent = {}
    for i in range(120):
        offset = rng.randrange(0, 256 * KiB, 512)
        length = rng.choice((512, 4 * KiB, 16 * KiB, 64 * KiB))
        payload = bytes([i % 250 + 1]) * length
        # FUA sends some writes through the writer thread: later inline writes must not overtake them.
        h = c.request(P.CMD_WRITE, offset, length, payload=payload, flags=P.CMD_FLAG_FUA if i % 7 == 0 else 0)
        model[offset : offset + length] = payload
        sent[h] = i
        if i % 10 == 0:
            c.request(P.CMD_READ, offset, 4 * KiB)
    replies = [c.reply() for _ in range(120 + 12)]
    assert all(r.error == 0 for r in replies)
    c.disconnect()
    assert s.image.read_bytes() == bytes(model)
    records = assert_replay_matches(s, tmp_path)
    assert [r.payload[0] for r in records] == [i % 250 + 1 for i in range(120)]  # the order they were sent


def test_pipelined_reads_all_come_back(nbd: Callable[..., Nbd]) -> None:
    """Hundreds of reads sent before any reply is read (the server meets backpressure) come back intact."""
    s = nbd(ring=False)
    data = s.before.read_bytes()
    rng = random.Random(3)
    c = s.client()
    want = {}
    for _ in range(400):
        length = rng.choice((4 * KiB, 64 * KiB, 128 * KiB, MiB))  # 1 MiB reads go through the read pool
        offset = rng.randrange(0, SIZE - length, 512)
        want[c.request(P.CMD_READ, offset, length)] = data[offset : offset + length]
    for _ in range(len(want)):
        r = c.reply()
        assert r.error == 0 and r.data == want.pop(r.handle)
    c.disconnect()


# -- bad input ---------------------------------------------------------------------

BIG = P.MAX_BLOCK + MiB


def _expect(error: int) -> Callable[[NbdClient], None]:
    return lambda c: None if c.reply().error == error else pytest.fail(f"expected {P.ERROR_NAMES[error]}")


BAD_REQUESTS: dict[str, tuple[Callable[[NbdClient], object], int | None]] = {
    # name: (what the client sends, the NBD error expected, or None when the connection must close)
    "bad magic": (lambda c: c.request(P.CMD_READ, 0, 512, magic=0x12345678), None),
    "unknown command": (lambda c: c.request(9, 0, 512), P.EINVAL),
    "block status without negotiation": (lambda c: c.request(7, 0, 512), P.EINVAL),
    "unknown command flag": (lambda c: c.request(P.CMD_WRITE, 0, 512, flags=1 << 9), P.EINVAL),
    "flush with a range": (lambda c: c.request(P.CMD_FLUSH, 0, 512), P.EINVAL),
    "write past the end": (lambda c: c.request(P.CMD_WRITE, SIZE - 512, 4096), P.ENOSPC),
    "write offset past the end": (lambda c: c.request(P.CMD_WRITE, SIZE + 4096, 512), P.ENOSPC),
    "write offset+length wraps": (lambda c: c.request(P.CMD_WRITE, 2**64 - 512, 4096), P.ENOSPC),
    "trim past the end": (lambda c: c.request(P.CMD_TRIM, SIZE - 512, 1024), P.ENOSPC),
    "zeroes wrap": (lambda c: c.request(P.CMD_WRITE_ZEROES, 2**64 - 512, 1024), P.ENOSPC),
    "read past the end": (lambda c: c.request(P.CMD_READ, SIZE - 512, 1024), P.EINVAL),
    "zero-length read past the end": (lambda c: c.request(P.CMD_READ, SIZE + 512, 0), P.EINVAL),
    "zero-length write at the end": (lambda c: c.request(P.CMD_WRITE, SIZE, 0), 0),
    "oversized write": (lambda c: c.request(P.CMD_WRITE, 0, BIG), P.EOVERFLOW),
    "oversized read": (lambda c: c.request(P.CMD_READ, 0, BIG), P.EOVERFLOW),
    "write far beyond the maximum": (lambda c: c.request(P.CMD_WRITE, 0, 2**32 - 1, payload=b"x" * 4096), None),
    "write header, half the payload, disconnect": (
        lambda c: (c.send(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_WRITE, 1, 0, 64 * KiB) + b"\xee" * 10000),
                   c.close()), None),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_refused_and_changes_nothing(case: str, nbd: Callable[..., Nbd]) -> None:
    s = nbd(capacity=4 * MiB)
    digest, commit = file_digest(s.image), s.commit()
    send, error = BAD_REQUESTS[case]
    c = s.client()
    send(c)
    if case.endswith("disconnect"):
        deadline = time.monotonic() + 10
        while "disconnected in the middle" not in s.proc.log():
            assert time.monotonic() < deadline, s.proc.log()
            time.sleep(0.02)
    elif error is None:
        assert c.is_closed()
    else:
        assert c.reply().error == error
        assert c.call(P.CMD_READ, 0, 512).data == s.before.read_bytes()[:512]  # still in step
        c.disconnect()
    assert (file_digest(s.image), s.commit()) == (digest, commit)
    if error:
        assert "127.0.0.1:" in s.proc.log() and P.ERROR_NAMES[error] in s.proc.log()  # logged with the peer
    other = s.client()  # the server still serves
    assert other.call(P.CMD_WRITE, 0, 4096).error == 0
    other.disconnect()
    assert s.commit() > commit


def test_read_only_export_refuses_writes(nbd: Callable[..., Nbd]) -> None:
    s = nbd(ring=False, extra=("--read-only",))
    c = s.client()
    assert c.tflags & P.TFLAG_READ_ONLY
    for cmd in (P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES):
        assert c.call(cmd, 0, 4096).error == P.EPERM
    assert c.call(P.CMD_READ, 0, 4096).data == s.before.read_bytes()[:4096]
    c.disconnect()
    assert file_digest(s.image) == file_digest(s.before)


# -- configuration -------------------------------------------------------------------


def test_bad_configuration_exits_2_with_a_clear_message(tmp_path: Path, shm_dir: Path) -> None:
    image = tmp_path / "disk.img"
    make_image(image)
    wrong = shm_dir / "wrong.ring"
    create_ring(wrong, 2 * SIZE, capacity=1 * MiB)
    not_ring = tmp_path / "not.ring"
    not_ring.write_bytes(bytes(8192))
    cases = {
        "does not exist": ["--image", str(tmp_path / "missing.img"), "--listen", "127.0.0.1:0"],
        f"is for a {2 * SIZE}-byte disk, the image is {SIZE} bytes": [
            "--image", str(image), "--ring", str(wrong), "--listen", "127.0.0.1:0"],
        "not a liftshift ring": ["--image", str(image), "--ring", str(not_ring), "--listen", "127.0.0.1:0"],
        "missing.ring does not exist": [
            "--image", str(image), "--ring", str(shm_dir / "missing.ring"), "--listen", "127.0.0.1:0"],
        "a read-only export has no writes": [
            "--image", str(image), "--ring", str(wrong), "--read-only", "--listen", "127.0.0.1:0"],
        "is not HOST:PORT": ["--image", str(image), "--listen", "nowhere"],
        "give --listen": ["--image", str(image)],
    }
    for message, args in cases.items():
        p = subprocess.run([sys.executable, "-m", "liftshift.iofilter.nbd", *args], capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 2, (message, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr, (message, p.stderr)


# -- the protocol core, in memory -------------------------------------------------------


@pytest.mark.parametrize(("cmd", "flags", "offset", "length", "read_only", "error"), [
    (P.CMD_READ, 0, 0, 4096, False, None),
    (P.CMD_READ, P.CMD_FLAG_FUA, SIZE - 4096, 4096, False, None),
    (P.CMD_READ, 0, SIZE, 0, False, None),
    (P.CMD_READ, 0, SIZE - 4096, 4097, False, P.EINVAL),
    (P.CMD_READ, 0, 0, P.MAX_BLOCK + 1, False, P.EOVERFLOW),
    (P.CMD_WRITE, P.CMD_FLAG_NO_HOLE, 0, 512, False, P.EINVAL),
    (P.CMD_WRITE, 0, SIZE, 1, False, P.ENOSPC),
    (P.CMD_WRITE, 0, 0, 512, True, P.EPERM),
    (P.CMD_WRITE_ZEROES, P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FUA, 0, SIZE, False, None),
    (P.CMD_TRIM, 0, 0, SIZE, False, None),  # no payload: longer than the maximum block is fine
    (P.CMD_TRIM, 0, 0, SIZE, True, P.EPERM),
    (P.CMD_FLUSH, 0, 0, 0, True, None),
    (P.CMD_FLUSH, 0, 1, 0, False, P.EINVAL),
    (P.CMD_DISC, P.CMD_FLAG_FUA, 0, 0, False, P.EINVAL),
    (5, 0, 0, 512, False, P.EINVAL),  # CACHE is not advertised
])
def test_check_request(cmd: int, flags: int, offset: int, length: int, read_only: bool, error: int | None) -> None:
    refused = P.check_request(P.ExportShape(SIZE, read_only), cmd, flags, offset, length)
    assert (refused.error if refused else None) == error, refused


def test_parse_info_request() -> None:
    assert P.parse_info_request(struct.pack(">I", 2) + b"ab" + struct.pack(">HHH", 2, 3, 1)) == ("ab", [3, 1])
    for bad in (b"", struct.pack(">I", 9) + b"ab\x00\x00", struct.pack(">I", 0) + struct.pack(">HH", 2, 3),
                struct.pack(">I", 1) + b"\xff" + struct.pack(">H", 0), struct.pack(">I", 1) + b"\x00\x00\x00"):
        with pytest.raises(P.BadOption):
            P.parse_info_request(bad)


def test_ring_watch_attaches_announces_and_detaches(nbd: Callable[..., Nbd], tmp_path: Path, shm_dir: Path) -> None:
    """--ring-watch: writes before the ring exists are not captured; once the ring appears the server
    announces itself (``producer``) and every later write is in it; removing the ring detaches."""
    ring = shm_dir / "watched.ring"
    s = nbd(ring=False, extra=("--ring-watch", str(ring), "--close-on-exit"))
    c = s.client()
    assert c.call(P.CMD_WRITE, 0, 4096, payload=b"\x01" * 4096).error == 0  # no ring yet: not captured
    create_ring(ring, s.image.stat().st_size, capacity=4 * MiB)
    deadline = time.monotonic() + 10
    while not _producer(ring):
        assert time.monotonic() < deadline, s.proc.log()
        time.sleep(0.01)
    assert _producer(ring) == s.proc.proc.pid
    assert c.call(P.CMD_WRITE, 8192, 4096, payload=b"\x02" * 4096).error == 0
    assert c.call(P.CMD_TRIM, 65536, 4096).error == 0
    assert [(r.offset, r.flags) for r in read_ring(ring)] == [(8192, FLAG_WRITE), (65536, FLAG_TRIM)]
    # A new ring in its place (the daemon starts capture afresh): the old one is left, the new one taken.
    os.rename(ring, shm_dir / "old.ring")
    os.rename(f"{ring}.bell", shm_dir / "old.ring.bell")
    deadline = time.monotonic() + 10
    while _producer(shm_dir / "old.ring"):
        assert time.monotonic() < deadline, s.proc.log()
        time.sleep(0.01)
    assert c.call(P.CMD_WRITE, 12288, 4096, payload=b"\x03" * 4096).error == 0  # detached: not captured
    create_ring(ring, s.image.stat().st_size, capacity=4 * MiB)
    deadline = time.monotonic() + 10
    while not _producer(ring):
        assert time.monotonic() < deadline, s.proc.log()
        time.sleep(0.01)
    assert c.call(P.CMD_WRITE, 16384, 4096, payload=b"\x04" * 4096).error == 0
    c.disconnect()
    assert s.proc.stop() == 0
    assert [(r.offset, r.flags) for r in read_ring(ring)] == [(16384, FLAG_WRITE), (0, FLAG_CLOSE)]
    assert [(r.offset, r.flags) for r in read_ring(shm_dir / "old.ring")] == [(8192, FLAG_WRITE),
                                                                             (65536, FLAG_TRIM)]


def _producer(ring: Path) -> int:
    from liftshift.iofilter.ring import Mapped

    try:
        m = Mapped(ring, writable=False)
    except FileNotFoundError:
        return 0
    try:
        return m.get("producer")
    finally:
        m.close()
