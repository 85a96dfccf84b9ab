"""The on-disk format of a seed: what ``seed export`` writes and ``seed import`` reads.

Design note
-----------
A seed is a directory meant to travel on a drive::

    liftshift-seed.json      the manifest (below)
    <vdisk_id>.img           each disk's content, a sparse raw image
    <vdisk_id>.xxh3          XXH3-128 of each chunk of that image, 16 bytes each

The manifest names the seed, the VM, the chunk size and, per disk, its
geometry, the shadow vdisk id it becomes at the sink, the ring sequence up to
which the source had tracked writes when the export finished, and the
XXH3-128 of its hash file.  The manifest carries the XXH3-128 of its own
canonical JSON, so a damaged or hand-edited manifest is refused as a whole.

What this does not prove is that nobody rewrote an image, its hash file and
the manifest consistently: the source daemon keeps its own copy of every
chunk hash, and the seeded migration compares the imported shadow against
that copy, so such a chunk is simply sent again over the network.

Reading checks everything that can be checked without the sink before any
byte is sent: the manifest's checksum, every file present, every image exactly
the disk's size (a truncated copy is named with both sizes), every hash file
the right length and matching the manifest.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import xxhash

from .errors import FailedPrecondition, LiftshiftError

MANIFEST = "liftshift-seed.json"
FORMAT = 1
HASH_BYTES = 16
_SEED_ID = re.compile(r"^s-[0-9a-f]{8}$")
_VDISK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SeedInvalid(FailedPrecondition):
    """A seed directory is incomplete, damaged or altered."""


class InsufficientSpace(LiftshiftError):
    """Not enough free space for the data that would be written."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class SeedDiskFile:
    """One disk of a seed."""

    name: str
    vdisk_id: str
    size: int
    image: str  # file name inside the seed directory
    hashes: str
    hashes_xxh3: str = ""  # hex XXH3-128 of the hash file
    data_bytes: int = 0
    tracked_seq: int = 0

    def nchunks(self, chunk: int) -> int:
        return (self.size + chunk - 1) // chunk


@dataclass
class Manifest:
    """The seed's manifest (``liftshift-seed.json``)."""

    seed_id: str
    vm: str
    chunk_size: int
    created: float
    source: str = ""  # the exporting host
    format: int = FORMAT
    disks: list[SeedDiskFile] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return asdict(self)

    def checksum(self) -> str:
        return xxhash.xxh3_128_hexdigest(_canonical(self.body()))

    def to_json(self) -> str:
        d = self.body()
        d["manifest_xxh3"] = self.checksum()
        return json.dumps(d, indent=1, sort_keys=True) + "\n"


def _canonical(d: dict[str, Any]) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def image_name(vdisk_id: str) -> str:
    return f"{vdisk_id}.img"


def hashes_name(vdisk_id: str) -> str:
    return f"{vdisk_id}.xxh3"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write the manifest atomically (temp file, fsync, rename, fsync the directory)."""
    path = directory / MANIFEST
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)
    return path


def _field(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise SeedInvalid(f"{where}: '{key}' is missing")
    v = d[key]
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise SeedInvalid(f"{where}: '{key}' has the wrong type ({type(v).__name__})")
    return v


def read_manifest(directory: Path) -> Manifest:
    """Load and check the manifest of the seed in ``directory``.

    Raises :class:`SeedInvalid` naming what is wrong: not a seed, unreadable,
    damaged JSON, a checksum that does not match (altered), a newer format,
    bad names or sizes."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise SeedInvalid(f"{directory} is not a directory")
    if not path.is_file():
        raise SeedInvalid(f"{directory} is not a liftshift seed: it has no {MANIFEST}",
                          hint="point at the directory `liftshift seed export` wrote")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SeedInvalid(f"{path} is damaged: {e}") from None
    if not isinstance(d, dict):
        raise SeedInvalid(f"{path} is damaged: not a JSON object")
    where = str(path)
    fmt = _field(d, "format", int, where)
    if fmt > FORMAT:
        raise SeedInvalid(f"{path} has seed format {fmt}; this liftshift reads format {FORMAT}",
                          hint="import with the liftshift version that exported it, or newer")
    stored = d.pop("manifest_xxh3", None)
    if stored != xxhash.xxh3_128_hexdigest(_canonical(d)):
        raise SeedInvalid(f"{path} was altered or damaged: its checksum does not match its content",
                          hint="copy the seed from the export again; a manifest must not be edited")
    disks = []
    for i, x in enumerate(_field(d, "disks", list, where)):
        w = f"{where}: disks[{i}]"
        if not isinstance(x, dict):
            raise SeedInvalid(f"{w} is not an object")
        disk = SeedDiskFile(name=_field(x, "name", str, w), vdisk_id=_field(x, "vdisk_id", str, w),
                            size=_field(x, "size", int, w), image=_field(x, "image", str, w),
                            hashes=_field(x, "hashes", str, w), hashes_xxh3=_field(x, "hashes_xxh3", str, w),
                            data_bytes=_field(x, "data_bytes", int, w), tracked_seq=_field(x, "tracked_seq", int, w))
        if not _VDISK_ID.match(disk.vdisk_id) or disk.vdisk_id in (".", ".."):
            raise SeedInvalid(f"{w}: vdisk_id {disk.vdisk_id!r} is not a valid shadow name")
        if disk.image != image_name(disk.vdisk_id) or disk.hashes != hashes_name(disk.vdisk_id):
            raise SeedInvalid(f"{w}: file names must be {image_name(disk.vdisk_id)} and {hashes_name(disk.vdisk_id)}")
        if disk.size <= 0:
            raise SeedInvalid(f"{w}: size must be positive")
        disks.append(disk)
    m = Manifest(seed_id=_field(d, "seed_id", str, where), vm=_field(d, "vm", str, where),
                 chunk_size=_field(d, "chunk_size", int, where), created=_field(d, "created", (int, float), where),
                 source=_field(d, "source", str, where), format=fmt, disks=disks)
    if not _SEED_ID.match(m.seed_id):
        raise SeedInvalid(f"{where}: seed_id {m.seed_id!r} is not a seed id")
    if m.chunk_size <= 0 or m.chunk_size & (m.chunk_size - 1) or m.chunk_size > 64 << 20:
        raise SeedInvalid(f"{where}: chunk_size {m.chunk_size} must be a power of two of at most 64 MiB")
    if not disks:
        raise SeedInvalid(f"{where}: the seed has no disks")
    return m


def check_files(directory: Path, m: Manifest) -> None:
    """Every image and hash file present, complete and matching the manifest."""
    for disk in m.disks:
        img = directory / disk.image
        try:
            size = img.stat().st_size
        except OSError as e:
            raise SeedInvalid(f"seed {m.seed_id}: disk {disk.name}: cannot read {img}: {e.strerror}",
                              hint="copy the whole seed directory") from None
        if size != disk.size:
            what = "truncated" if size < disk.size else "longer than the disk"
            raise SeedInvalid(f"seed {m.seed_id}: {img} is {what}: {size} bytes, the disk is {disk.size}",
                              hint="copy the seed from the export again")
        hashes = read_hashes(directory, m, disk)
        if xxhash.xxh3_128_hexdigest(hashes) != disk.hashes_xxh3:
            raise SeedInvalid(f"seed {m.seed_id}: {directory / disk.hashes} does not match the manifest "
                              "(damaged or altered)", hint="copy the seed from the export again")


def read_hashes(directory: Path, m: Manifest, disk: SeedDiskFile) -> bytes:
    """The chunk hashes of ``disk`` (16 bytes per chunk), length checked."""
    path = directory / disk.hashes
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SeedInvalid(f"seed {m.seed_id}: disk {disk.name}: cannot read {path}: {e.strerror}",
                          hint="copy the whole seed directory") from None
    want = disk.nchunks(m.chunk_size) * HASH_BYTES
    if len(data) != want:
        raise SeedInvalid(f"seed {m.seed_id}: {path} is {len(data)} bytes, expected {want} "
                          f"({disk.nchunks(m.chunk_size)} chunks)", hint="copy the seed from the export again")
    return data


def data_chunks(fd: int, size: int, chunk: int) -> list[int]:
    """Offsets of the chunks of a sparse file that hold any data (per SEEK_DATA)."""
    out = []
    off = 0
    while off < size:
        try:
            data = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break  # ENXIO: nothing after off
        if data >= size:
            break
        first = data - data % chunk
        out.append(first)
        off = first + chunk
    return out


def free_bytes(path: Path) -> int:
    """Bytes available to an unprivileged writer on the filesystem of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
