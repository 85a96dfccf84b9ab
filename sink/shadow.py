"""Shadow vdisk files: names, the sparse flat file and its VMDK descriptor.

Design note
-----------
A shadow vdisk ``<id>`` is two files in the data directory, the layout
VMware calls a "vmfs" flat disk:

* ``<id>-flat.vmdk`` — the raw image, created sparse at its exact size with
  ``ftruncate`` (a new shadow reads as zeros and occupies no blocks);
* ``<id>.vmdk`` — the text descriptor naming the flat file as its only
  extent, so vSphere (and ``qemu-img``) open the shadow as a disk.

Names come from the network, so :func:`check_vdisk_id` is strict: ASCII
letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at
most 128 characters, and never ``/``, ``\\``, NUL or ``..``; the files can
then only ever land directly inside the data directory.

Both files are created under temporary names and renamed into place, then
the directory is fsynced, so a crash leaves either no shadow or a complete
one.  A shadow is created only by a caller that has no record of it in the
state database (see :mod:`liftshift.sink.state`); leftover files without a
record are replaced, because nothing vouches for their content.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from liftshift.daemon.errors import FailedPrecondition, InvalidArgument

SECTOR = 512
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Geometry VMware reports for SCSI (lsilogic) disks.
HEADS = 255
SECTORS_PER_TRACK = 63
MAX_CYLINDERS = 65535
MAX_MIGRATION_ID = 256


def check_vdisk_id(vdisk_id: str) -> str:
    """Return ``vdisk_id`` if it is a safe shadow name, else raise :class:`InvalidArgument`."""
    shown = repr(vdisk_id[:140])
    for bad, what in (("\0", "a NUL byte"), ("/", "'/'"), ("\\", "'\\'"), ("..", "'..'")):
        if bad in vdisk_id:
            raise InvalidArgument(f"vdisk id {shown} contains {what}",
                                  hint="ids are [A-Za-z0-9._-], 1-128 characters, no path separators")
    if not ID_RE.fullmatch(vdisk_id):
        raise InvalidArgument(f"vdisk id {shown} is not 1-128 characters of [A-Za-z0-9._-] starting with a "
                              "letter or digit")
    return vdisk_id


def check_size(size: int) -> int:
    """A shadow size must be a positive whole number of 512-byte sectors."""
    if size <= 0 or size % SECTOR:
        raise InvalidArgument(f"size_bytes {size} is not a positive multiple of {SECTOR}")
    return size


def check_migration_id(migration_id: str) -> str:
    """Migration ids are recorded and compared, and appear in logs: keep them printable."""
    if len(migration_id) > MAX_MIGRATION_ID or not migration_id.isprintable():
        raise InvalidArgument(f"migration_id {migration_id[:40]!r} must be at most {MAX_MIGRATION_ID} "
                              "printable characters")
    return migration_id


@dataclass(frozen=True)
class ShadowPaths:
    """Where the two files of a shadow live."""

    flat: Path
    descriptor: Path

    @classmethod
    def of(cls, data_dir: Path, vdisk_id: str) -> ShadowPaths:
        """The paths of shadow ``vdisk_id`` (validated) in ``data_dir``."""
        check_vdisk_id(vdisk_id)
        return cls(data_dir / f"{vdisk_id}-flat.vmdk", data_dir / f"{vdisk_id}.vmdk")


def descriptor_text(vdisk_id: str, size: int, *, cid: int | None = None, disk_uuid: uuid.UUID | None = None) -> str:
    """The VMware text descriptor of a monolithic flat ("vmfs") disk of ``size`` bytes."""
    check_vdisk_id(vdisk_id)
    check_size(size)
    sectors = size // SECTOR
    if cid is None:
        # CID changes whenever the disk content does; ffffffff means "no parent".
        cid = secrets.randbelow(0xFFFFFFFF)
    disk_uuid = disk_uuid or uuid.uuid4()
    cylinders = max(1, min(MAX_CYLINDERS, sectors // (HEADS * SECTORS_PER_TRACK)))
    uuid_bytes = " ".join(f"{b:02x}" for b in disk_uuid.bytes)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={cid:08x}\n"
        "parentCID=ffffffff\n"
        'createType="vmfs"\n'
        "\n"
        "# Extent description\n"
        f'RW {sectors} VMFS "{vdisk_id}-flat.vmdk"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        'ddb.adapterType = "lsilogic"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        f'ddb.geometry.heads = "{HEADS}"\n'
        f'ddb.geometry.sectors = "{SECTORS_PER_TRACK}"\n'
        f'ddb.longContentID = "{secrets.token_hex(16)}"\n'
        f'ddb.uuid = "{uuid_bytes}"\n'
        'ddb.virtualHWVersion = "14"\n'
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _install(path: Path, size: int | None, text: str | None) -> None:
    """Write a file under a temporary name (sparse ``size`` bytes, or ``text``),
    fsync it and rename it over ``path``."""
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if size is not None:
            os.ftruncate(fd, size)
        if text is not None:
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def create_shadow(data_dir: Path, vdisk_id: str, size: int) -> ShadowPaths:
    """Create (or replace) shadow ``vdisk_id``: a sparse zero flat file of
    exactly ``size`` bytes and its descriptor, both durable on return."""
    paths = ShadowPaths.of(data_dir, vdisk_id)
    check_size(size)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        _install(paths.flat, size, None)
    except OSError as e:
        if e.errno in (errno.EFBIG, errno.EINVAL):
            raise InvalidArgument(f"the sink's filesystem cannot hold a {size}-byte file: {e.strerror}") from e
        raise
    _install(paths.descriptor, None, descriptor_text(vdisk_id, size))
    _fsync_dir(data_dir)
    return paths


def open_flat(paths: ShadowPaths, size: int) -> int:
    """Open an existing shadow's flat file read-write; check it is the size on record."""
    try:
        fd = os.open(paths.flat, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FailedPrecondition(f"shadow flat file {paths.flat} is missing although the sink's state records it",
                                 hint="restore the file, or remove the vdisk from the sink's state "
                                      "and copy it again") from None
    actual = os.fstat(fd).st_size
    if actual != size:
        os.close(fd)
        raise FailedPrecondition(f"shadow flat file {paths.flat} is {actual} bytes, the sink's state says {size}")
    return fd


def allocated_bytes(path: Path) -> int:
    """Bytes the file occupies on disk (holes excluded); 0 if it is missing."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0
