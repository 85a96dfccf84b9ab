"""Reading a VMDK text descriptor: which flat file holds a source disk's bytes.

Design note
-----------
On a VMFS or NFS datastore a virtual disk ``[ds] vm/vm.vmdk`` is a small text
descriptor beside the file that holds the data, ``vm/vm-flat.vmdk`` (the
extent line ``RW <sectors> VMFS "vm-flat.vmdk"``).  The daemon's background
copy reads that flat file, so the ``vsphere`` platform resolves each disk's
descriptor to it here.  Only disks whose whole content is one flat extent in
the same directory can be read directly; sparse formats (``vmfsSparse``,
``seSparse``, snapshot deltas), several extents, and extents elsewhere are
refused by name (:class:`UnreadableDisk`), never guessed.  The sink writes
exactly this shape for shadow vdisks (:func:`liftshift.sink.shadow.descriptor_text`),
so the destination vCenter reads them like any other disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import FailedPrecondition

SECTOR = 512
MAX_DESCRIPTOR = 64 << 10  # a descriptor is a few hundred bytes; anything big is a data file
FLAT_TYPES = {"vmfs", "monolithicFlat", "vmfsThin", "vmfsEagerZeroedThick", "vmfsPreallocated"}
_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)\s+"([^"]+)"(?:\s+(\d+))?\s*$')
_KEY = re.compile(r'^\s*([A-Za-z0-9_.]+)\s*=\s*"?([^"]*)"?\s*$')


class UnreadableDisk(FailedPrecondition):
    """The disk's bytes are not one flat file the daemon can read."""


@dataclass(frozen=True)
class Extent:
    access: str  # RW, RDONLY, NOACCESS
    sectors: int
    kind: str  # VMFS, FLAT, SPARSE, VMFSSPARSE, SESPARSE, ...
    file: str
    offset: int  # in sectors


@dataclass(frozen=True)
class Descriptor:
    create_type: str
    parent_cid: str
    extents: tuple[Extent, ...]

    @property
    def size(self) -> int:
        return sum(e.sectors for e in self.extents) * SECTOR


def parse(text: str, where: str = "descriptor") -> Descriptor:
    """The create type, parent and extents of a descriptor (UnreadableDisk if it is not one)."""
    if not text.lstrip().startswith("# Disk DescriptorFile"):
        raise UnreadableDisk(f"{where} is not a VMDK text descriptor",
                             hint="the datastore path must name the disk's .vmdk descriptor")
    keys: dict[str, str] = {}
    extents = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT.match(line)
        if m:
            extents.append(Extent(m[1], int(m[2]), m[3].upper(), m[4], int(m[5] or 0)))
            continue
        k = _KEY.match(line)
        if k:
            keys[k[1]] = k[2]
    return Descriptor(keys.get("createType", ""), keys.get("parentCID", "ffffffff").lower(), tuple(extents))


def flat_file(descriptor: Path, capacity: int | None = None) -> Path:
    """The flat file holding all of the disk described by ``descriptor``.

    UnreadableDisk (naming the file and why) for a sparse or delta disk, several
    extents, an extent outside the descriptor's directory, or a size that
    disagrees with ``capacity``; FailedPrecondition if the files cannot be read.
    """
    try:
        with open(descriptor, "rb") as f:
            raw = f.read(MAX_DESCRIPTOR + 1)
    except OSError as e:
        raise FailedPrecondition(f"cannot read disk descriptor {descriptor}: {e.strerror or e}",
                                 hint="check the daemon's datastore mount ([vsphere.datastores])") from None
    if len(raw) > MAX_DESCRIPTOR:
        raise UnreadableDisk(f"{descriptor} is not a VMDK text descriptor (it is {len(raw)}+ bytes)")
    d = parse(raw.decode("utf-8", "replace"), str(descriptor))
    if d.parent_cid != "ffffffff":
        raise UnreadableDisk(f"{descriptor} is a snapshot delta (it has a parent disk)",
                             hint="delete or consolidate the VM's snapshots before migrating")
    if d.create_type not in FLAT_TYPES:
        raise UnreadableDisk(f"{descriptor} is a {d.create_type or 'untyped'!r} disk; only flat disks "
                             f"({', '.join(sorted(FLAT_TYPES))}) are read directly",
                             hint="convert the disk to thin or thick provisioning (Storage vMotion) first")
    if len(d.extents) != 1 or d.extents[0].kind not in ("VMFS", "FLAT") or d.extents[0].offset:
        raise UnreadableDisk(f"{descriptor} has {len(d.extents)} extent(s) "
                             f"({', '.join(e.kind for e in d.extents) or 'none'}); one flat extent is needed")
    name = d.extents[0].file
    if "/" in name or name in ("", ".", ".."):
        raise UnreadableDisk(f"{descriptor}: extent {name!r} is not a file beside the descriptor")
    if capacity is not None and d.size != capacity:
        raise UnreadableDisk(f"{descriptor} describes {d.size} bytes, vCenter says the disk has {capacity}")
    flat = descriptor.with_name(name)
    if not flat.is_file():
        raise FailedPrecondition(f"flat file {flat} of disk {descriptor} does not exist",
                                 hint="check the daemon's datastore mount ([vsphere.datastores])")
    return flat
