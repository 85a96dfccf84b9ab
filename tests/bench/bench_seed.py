"""Seed import throughput: a shipped seed streamed into a real sink process.

* ``seed.import``: ``liftshift seed import``'s library form
  (:func:`liftshift.ctl.seed.import_seed`) writing a 512 MiB seed of random
  data into a fresh shadow over loopback gRPC: manifest and file checks,
  XXH3-128 of every chunk at the sink, pwrite, one fdatasync per disk.
  Baseline: ``dd bs=1M conv=fdatasync`` of the same image into a new file in
  the sink's data directory (the least any import must do: read, write,
  flush), same run, same filesystem.  (``cp`` is no baseline: on the same
  filesystem it copies inside the kernel.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import xxhash
from run import result

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: procs

from procs import python_module, start_process  # noqa: E402

from liftshift.ctl.seed import import_seed  # noqa: E402
from liftshift.daemon import seedfile  # noqa: E402

MiB = 1 << 20
SIZE = 512 * MiB
CHUNK = MiB


def make_seed(directory: Path) -> None:
    vid = "s-0000beef.bench.disk0"
    hashes = bytearray()
    block = os.urandom(CHUNK)
    with open(directory / seedfile.image_name(vid), "wb") as f:
        for i in range(SIZE // CHUNK):
            data = i.to_bytes(8, "little") + block[8:]  # distinct chunks without generating 512 MiB of entropy
            f.write(data)
            hashes += xxhash.xxh3_128_digest(data)
    (directory / seedfile.hashes_name(vid)).write_bytes(bytes(hashes))
    m = seedfile.Manifest(seed_id="s-0000beef", vm="bench", chunk_size=CHUNK, created=time.time(), source="bench")
    m.disks.append(seedfile.SeedDiskFile(name="disk0", vdisk_id=vid, size=SIZE, image=seedfile.image_name(vid),
                                         hashes=seedfile.hashes_name(vid),
                                         hashes_xxh3=xxhash.xxh3_128_hexdigest(bytes(hashes)), data_bytes=SIZE))
    seedfile.write_manifest(directory, m)


def run() -> list[dict]:
    finals: list = []
    where = os.environ.get("BENCH_DIR", "/var/tmp")  # /dev/shm: compare software, not the disk
    with tempfile.TemporaryDirectory(prefix="liftshift-bench-seed-", dir=where) as tmp:
        base = Path(tmp)
        seed = base / "seed"
        seed.mkdir()
        make_seed(seed)
        data = base / "sink-data"
        cfg = base / "sink.toml"
        cfg.write_text(f'data_dir = "{data}"\nlisten = "127.0.0.1:0"\nreserve_free_bytes = 0\ninsecure = true\n'
                       'log_level = "warning"\n')
        pf = base / "port"
        proc = start_process(python_module("liftshift.sink.main", "--config", cfg, "--port-file", pf), pf,
                             cleanup=finals.append)
        try:
            img = next(seed.glob("*.img"))
            subprocess.run(["cat", str(img)], stdout=subprocess.DEVNULL, check=True)  # both start from page cache
            t0 = time.perf_counter()
            subprocess.run(["dd", f"if={img}", f"of={data / 'copy.img'}", "bs=1M", "conv=fdatasync", "status=none"],
                           check=True)
            dd_rate = SIZE / (time.perf_counter() - t0) / MiB
            (data / "copy.img").unlink()
            t0 = time.perf_counter()
            got = asyncio.run(import_seed(seed, proc.address))
            rate = SIZE / (time.perf_counter() - t0) / MiB
            assert got.disks[0].bytes_written == SIZE and not got.rejected
        finally:
            for f in reversed(finals):
                f()
        shutil.rmtree(data, ignore_errors=True)
    return [result("seed.import", "throughput", rate, "MiB/s", "dd conv=fdatasync", dd_rate)]


if __name__ == "__main__":
    for r in run():
        print(r)
