"""Resolving a VMDK descriptor to the flat file the background copy reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from liftshift.daemon.errors import FailedPrecondition
from liftshift.daemon.vmdk import UnreadableDisk, flat_file, parse
from liftshift.sink.shadow import descriptor_text

MiB = 1 << 20


def disk(tmp_path: Path, text: str, flat: str = "d-flat.vmdk", size: int = 4 * MiB) -> Path:
    desc = tmp_path / "d.vmdk"
    desc.write_text(text)
    if flat:
        with open(tmp_path / flat, "wb") as f:
            f.truncate(size)
    return desc


def test_the_sinks_own_descriptor_resolves_to_its_flat_file(tmp_path: Path) -> None:
    desc = disk(tmp_path, descriptor_text("d", 4 * MiB))
    d = parse(desc.read_text())
    assert (d.create_type, d.parent_cid, d.size) == ("vmfs", "ffffffff", 4 * MiB)
    assert flat_file(desc, 4 * MiB) == tmp_path / "d-flat.vmdk"


@pytest.mark.parametrize(("change", "needle"), [
    (('createType="vmfs"', 'createType="seSparse"'), "seSparse"),
    (('createType="vmfs"', 'createType="monolithicSparse"'), "monolithicSparse"),
    (("parentCID=ffffffff", "parentCID=1234abcd"), "snapshot delta"),
    (('RW 8192 VMFS "d-flat.vmdk"', 'RW 4096 VMFS "d-flat.vmdk"\nRW 4096 VMFS "d-f2.vmdk"'), "2 extent"),
    (('RW 8192 VMFS "d-flat.vmdk"', 'RW 8192 VMFS "../other/d-flat.vmdk"'), "not a file beside"),
    (('RW 8192 VMFS "d-flat.vmdk"', 'RW 8000 VMFS "d-flat.vmdk"'), "vCenter says the disk has"),
])
def test_disks_that_cannot_be_read_directly_are_refused_by_name(tmp_path: Path, change: tuple[str, str],
                                                                needle: str) -> None:
    text = descriptor_text("d", 4 * MiB)
    assert change[0] in text
    desc = disk(tmp_path, text.replace(*change))
    with pytest.raises(UnreadableDisk, match=needle):
        flat_file(desc, 4 * MiB)


def test_not_a_descriptor_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UnreadableDisk, match="not a VMDK text descriptor"):
        flat_file(disk(tmp_path, "KDMV\x01binary sparse header"), 4 * MiB)
    big = tmp_path / "big.vmdk"
    big.write_bytes(b"# Disk DescriptorFile\n" + b"x" * (70 << 10))
    with pytest.raises(UnreadableDisk, match="not a VMDK text descriptor"):
        flat_file(big)
    with pytest.raises(FailedPrecondition, match="cannot read disk descriptor"):
        flat_file(tmp_path / "absent.vmdk")
    desc = disk(tmp_path, descriptor_text("d", 4 * MiB), flat="")
    (tmp_path / "d-flat.vmdk").unlink(missing_ok=True)
    with pytest.raises(FailedPrecondition, match="does not exist"):
        flat_file(desc, 4 * MiB)
