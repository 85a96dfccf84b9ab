"""Seeded ("sneakernet") migration end to end, through the real CLI and daemons.

A sim VM keeps writing while its disks are exported; the daemon is killed
while the seed is "in transit" and its tracking must carry on; the shipped
seed arrives with damaged chunks (caught by the import) and with a chunk
altered together with its hashes and manifest (caught only by the daemon's
own record); after the seeded migration and cutover the destination booted
from exactly the bytes the stopped source holds, and far less than the disk
crossed the network.  Then every kind of bad seed is refused with a clear
error and nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash
from procs import python_module, start_process
from simsite import SimVmDef, Site, assert_identical_at_stop
from tooling import missing

from liftshift.daemon import seedfile
from liftshift.daemon.errors import FailedPrecondition
from liftshift.v1 import control_pb2 as cpb

MiB = 1 << 20


def cli(site: Site, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "liftshift.ctl", "--address", site.address, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def seed_of(site: Site, seed_id: str) -> cpb.Seed:
    got = site.call("ListSeeds", cpb.SeedRef(seed_id=seed_id))
    assert isinstance(got, cpb.ListSeedsResponse)
    return got.seeds[0]


def export(site: Site, vm: str, directory: Path) -> cpb.Seed:
    r = cli(site, "seed", "export", vm, "--to", str(directory), "--json")
    assert r.returncode == 0, r
    s = json.loads(r.stdout)
    assert s["state"] == "exported", s
    return seed_of(site, s["id"])


def import_seed(site: Site, directory: Path, sink: str | None = None) -> subprocess.CompletedProcess[str]:
    return cli(site, "seed", "import", str(directory), "--sink", sink or site.destination, "--json")


def sink_vdisks(site: Site, sink: str | None = None) -> list[str]:
    import grpc

    from liftshift.v1 import replication_pb2 as rpb
    from liftshift.v1 import replication_pb2_grpc

    with grpc.secure_channel(sink or site.destination, site.pki.credentials()) as ch:
        got = replication_pb2_grpc.ReplicationStub(ch).ListVdisks(rpb.ListVdisksRequest(), timeout=10)
    return [v.vdisk_id for v in got.vdisks]


def small_filesystem(path: Path, size: int, request: pytest.FixtureRequest) -> Path:
    """A tmpfs of ``size`` bytes mounted at ``path`` (needs root, as CI runs)."""
    if os.geteuid() != 0:
        missing("mounting a small filesystem needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "liftshift-test", str(path)], check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(path)], check=False))
    return path


def rewrite_consistently(directory: Path, disk_index: int, chunk_index: int) -> None:
    """Alter one chunk of the seed and fix up its hash file and manifest to match,
    as a careless (or malicious) hand would; only the daemon's record can tell."""
    m = seedfile.read_manifest(directory)
    d = m.disks[disk_index]
    img = directory / d.image
    off = chunk_index * m.chunk_size
    with open(img, "r+b") as f:
        f.seek(off)
        data = bytearray(f.read(m.chunk_size))
        data[100:108] = b"ALTERED!"
        f.seek(off)
        f.write(data)
    hashes = bytearray((directory / d.hashes).read_bytes())
    hashes[chunk_index * 16:(chunk_index + 1) * 16] = xxhash.xxh3_128_digest(bytes(data))
    (directory / d.hashes).write_bytes(bytes(hashes))
    d.hashes_xxh3 = xxhash.xxh3_128_hexdigest(bytes(hashes))
    (directory / seedfile.MANIFEST).write_text(m.to_json())


def test_seeded_migration_survives_daemon_crashes_and_a_damaged_seed(tmp_path, shm_dir, request) -> None:
    vm = SimVmDef("db-1", [("disk0", 256 * MiB, 192 * MiB), ("disk1", 32 * MiB, 24 * MiB)], rate_ops=150,
                  block_size=4096, working_set=4 * MiB, boot_digest=True)
    site = Site(tmp_path, shm_dir, [vm], request.addfinalizer).start()
    drive = tmp_path / "usb" / "db-1"

    # The daemon dies in the middle of the export; the restarted one finishes it.
    r = cli(site, "seed", "export", "db-1", "--to", str(drive), "--no-wait", "--json")
    assert r.returncode == 0, r
    sid = json.loads(r.stdout)["id"]
    deadline = time.monotonic() + 60
    while True:
        seed = seed_of(site, sid)
        done, total = sum(d.exported_bytes for d in seed.disks), sum(d.size_bytes for d in seed.disks)
        if 0 < done < total:
            break
        assert seed.state == "exporting" and time.monotonic() < deadline, seed
        time.sleep(0.005)
    assert site.daemon is not None
    site.daemon.kill()
    site.start_daemon()
    while (seed := seed_of(site, sid)).state == "exporting":
        assert time.monotonic() < deadline, seed
        time.sleep(0.1)
    assert seed.state == "exported", seed
    assert f"seed {sid} of VM db-1: exporting, tracking writes" in site.daemon.log()  # it did resume
    m = seedfile.read_manifest(drive)
    seedfile.check_files(drive, m)
    assert m.vm == "db-1" and [d.name for d in m.disks] == ["disk0", "disk1"]
    assert all(d.data_bytes > 0 for d in m.disks)

    # In transit: the daemon dies; the guest keeps writing into the ring.
    before = {d.name: d.tracked_seq for d in seed.disks}
    assert site.daemon is not None
    site.daemon.kill()
    time.sleep(1.5)
    site.start_daemon()
    deadline = time.monotonic() + 30
    while True:
        seed = seed_of(site, seed.id)
        if all(d.tracked_seq > before[d.name] for d in seed.disks):
            break
        assert time.monotonic() < deadline, seed
        time.sleep(0.2)
    assert seed.state == "exported" and sum(d.dirty_bytes for d in seed.disks) > 0

    # The drive arrives damaged: two chunks of disk0 flipped (their hashes
    # unchanged), one chunk of disk1 altered with its hash and manifest.
    chunk = m.chunk_size
    data0 = [o for o in range(0, m.disks[0].size, chunk)][2:4]
    with open(drive / m.disks[0].image, "r+b") as f:
        for off in data0:
            f.seek(off + 4096)
            b = f.read(1)
            f.seek(off + 4096)
            f.write(bytes([b[0] ^ 0xFF]))
    rewrite_consistently(drive, 1, 3)

    r = import_seed(site, drive)
    assert r.returncode == 0, r
    imported = json.loads(r.stdout)
    assert imported["seed_id"] == seed.id
    by_disk = {d["vdisk_id"]: d for d in imported["disks"]}
    assert by_disk[m.disks[0].vdisk_id]["rejected_offsets"] == [int(o) for o in data0]
    assert by_disk[m.disks[1].vdisk_id]["rejected_offsets"] == []  # consistent, so the import cannot tell

    r = cli(site, "migrate", "create", "db-1", "--type", "seeded", "--dest", site.destination, "--auto-cutover",
            "--start", "--json")
    assert r.returncode == 0, r
    mig = json.loads(r.stdout)
    assert mig["type"] == "MIGRATION_TYPE_SEEDED"
    done = site.wait_state(mig["id"], cpb.MIGRATION_STATE_COMPLETED, timeout=120)
    assert done.vms[0].cutover.identical
    # The destination VM booted from exactly what the stopped source holds
    # (it writes to its disks from then on, so they are not compared later).
    assert_identical_at_stop(site, mig["id"], vm)
    # Only the damaged chunks and what the guest wrote crossed the network.
    sent = {p.name: p.chunk_bytes_sent for p in done.vms[0].vdisks}
    size = {d.name: d.size for d in m.disks}
    assert sent["disk0"] >= 2 * chunk and sent["disk1"] >= chunk, sent
    assert sum(sent.values()) < 0.5 * sum(size.values()), sent
    assert seed_of(site, seed.id).state == "used"


def test_bad_seeds_are_refused_and_nothing_is_written(tmp_path, shm_dir, request) -> None:
    a = SimVmDef("app-a", [("disk0", 8 * MiB, 4 * MiB)], rate_ops=50, working_set=1 * MiB)
    b = SimVmDef("app-b", [("disk0", 8 * MiB, 4 * MiB)], rate_ops=50, working_set=1 * MiB)
    c = SimVmDef("app-c", [("disk0", 8 * MiB, 4 * MiB)], rate_ops=50, working_set=1 * MiB)
    site = Site(tmp_path, shm_dir, [a, b, c], request.addfinalizer).start()
    seed_a = export(site, "app-a", tmp_path / "seed-a")
    seed_b = export(site, "app-b", tmp_path / "seed-b")

    def bad_copy(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(tmp_path / "seed-a", d)
        return d

    def refused(directory: Path, words: str, sink: str | None = None) -> None:
        r = import_seed(site, directory, sink)
        assert r.returncode != 0, r
        err = json.loads(r.stderr.strip().splitlines()[-1])["error"]
        assert words in err["message"], err
        assert sink_vdisks(site, sink) == []

    truncated = bad_copy("truncated")
    img = truncated / seedfile.image_name(seed_a.disks[0].vdisk_id)
    with open(img, "r+b") as f:
        f.truncate(5 * MiB)
    refused(truncated, "truncated: 5242880 bytes, the disk is 8388608")

    altered = bad_copy("altered")
    text = (altered / seedfile.MANIFEST).read_text().replace('"app-a"', '"app-z"')
    (altered / seedfile.MANIFEST).write_text(text)
    refused(altered, "altered or damaged")

    no_hashes = bad_copy("no-hashes")
    (no_hashes / seedfile.hashes_name(seed_a.disks[0].vdisk_id)).unlink()
    refused(no_hashes, "cannot read")

    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "is not a liftshift seed")

    # A sink that must keep more free space than the filesystem has.
    full = tmp_path / "full-sink"
    full.mkdir()
    port_file = full / "port"
    (full / "sink.toml").write_text(f'listen = "127.0.0.1:0"\ndata_dir = "{full / "data"}"\n'
                                    'reserve_free_bytes = "1000TiB"\n' + site.pki.sink_toml())
    start_process(python_module("liftshift.sink.main", "--config", full / "sink.toml", "--port-file", port_file),
                  port_file, cleanup=request.addfinalizer, credentials=site.pki.credentials())
    full_sink = f"127.0.0.1:{port_file.read_text().strip()}"
    refused(tmp_path / "seed-a", "needs", full_sink)
    assert not any(p.name.endswith(".vmdk") for p in (full / "data").glob("*"))

    # Only B's seed reaches the sink: A's seeded migration is refused, naming it.
    assert import_seed(site, tmp_path / "seed-b").returncode == 0
    req = cpb.CreateMigrationRequest(vms=["app-a"], destination=site.destination, type=cpb.MIGRATION_TYPE_SEEDED)
    with pytest.raises(FailedPrecondition, match=f"seed {seed_a.id} of VM 'app-a' has not been imported") as e:
        site.call("CreateMigration", req)
    assert seed_b.id in (e.value.hint or "")
    with pytest.raises(FailedPrecondition, match="has no seed"):
        site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["app-c"], destination=site.destination,
                                                                type=cpb.MIGRATION_TYPE_SEEDED))
    # A live migration may not take rings a seed is tracking.
    with pytest.raises(FailedPrecondition, match="tracking its writes"):
        site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["app-a"], destination=site.destination))
    listed = site.call("ListMigrations", cpb.ListMigrationsRequest(all=True))
    assert isinstance(listed, cpb.ListMigrationsResponse) and not listed.migrations

    # Export refusals: a non-empty directory, a second seed of the same VM.
    r = cli(site, "seed", "export", "app-c", "--to", str(tmp_path / "seed-a"))
    assert r.returncode != 0 and "not an empty directory" in r.stderr, r
    r = cli(site, "seed", "export", "app-a", "--to", str(tmp_path / "seed-a2"))
    assert r.returncode != 0 and f"already has seed {seed_a.id}" in r.stderr, r

    # A drive too small for the VM's disks: refused before anything is made there.
    small = small_filesystem(tmp_path / "small-drive", 1 * MiB, request)
    r = cli(site, "seed", "export", "app-c", "--to", str(small / "seed-c"))
    assert r.returncode != 0 and "bytes free; VM app-c's disks hold" in r.stderr, r
    assert "export to a larger drive" in r.stderr, r
    assert list(small.iterdir()) == []
    r = cli(site, "seed", "list")
    assert r.returncode == 0 and "app-c" not in r.stdout, r

    # Dropping A's seed frees its VM for a live migration.
    r = cli(site, "seed", "drop", seed_a.id)
    assert r.returncode == 0 and "dropped" in r.stdout, r
    r = cli(site, "seed", "list")
    assert r.returncode == 0 and seed_a.id in r.stdout and "dropped" in r.stdout, r
    m = site.call("CreateMigration", cpb.CreateMigrationRequest(vms=["app-a"], destination=site.destination))
    assert isinstance(m, cpb.Migration) and m.type == cpb.MIGRATION_TYPE_LIVE
