"""The platform contract suite against the ``vsphere`` platform, on two simulated vCenters.

The source vCenter is a govmomi simulator whose hosts are played by
:class:`esxhost.EsxHost` (guests writing the VMs' flat files, the IO filter
attached by the capture policy); the destination is a second simulator whose
datastore directory holds the sink's data directory, so the shadow VM's disks
are the files the sink wrote.  Also here: the vsphere-specific refusals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e import free_port
from esxhost import EsxHost, make_vm
from platform_contract import ContractEnv, PlatformContract, open_shadows
from procs import python_module, start_process
from vcsim import Vcsim, start_vcsim

from liftshift.daemon.errors import FailedPrecondition, NotFound, Unauthenticated
from liftshift.daemon.platform import Power, ShadowDisk
from liftshift.daemon.settings import VsphereConfig, VsphereSide
from liftshift.daemon.vsphere import NotCapturable
from liftshift.daemon.vsphere_platform import VspherePlatform

MiB = 1 << 20


def side(vc: Vcsim, **kw: object) -> VsphereSide:
    return VsphereSide(url=vc.url, user=vc.username, password=vc.password, ca_file=vc.cert_file, **kw)  # type: ignore[arg-type]


@dataclass
class Sites:
    src: Vcsim
    dst: Vcsim
    host: EsxHost
    sink: str
    cfg: VsphereConfig


@pytest.fixture
def sites(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest) -> Sites:
    src = start_vcsim(tmp_path / "src", name="source", vms=0, cleanup=request.addfinalizer)
    dst = start_vcsim(tmp_path / "dst", name="destination", vms=0, cleanup=request.addfinalizer)
    make_vm(src, "running-1", (4 * MiB, 2 * MiB))
    make_vm(src, "stopped-1", (2 * MiB,), power_on=False)
    host = EsxHost(src, shm_dir, tmp_path / "esx", rate_ops=500)
    host.prepare()
    host.start()
    request.addfinalizer(host.stop)
    port = free_port()
    data = dst.datastore_dir / "liftshift"
    cfg = tmp_path / "sink.toml"
    cfg.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{data}"\ninsecure = true\n')
    start_process(python_module("liftshift.sink.main", "--config", cfg, "--port-file", tmp_path / "sink.port"),
                  tmp_path / "sink.port", cleanup=request.addfinalizer)
    vcfg = VsphereConfig(source=side(src), destination=side(dst), datastores={"LocalDS_0": str(src.datastore_dir)},
                         ring_dir=shm_dir, ring_capacity=1 * MiB, capture_wait_s=15, close_wait_s=15)
    vcfg.check()
    return Sites(src, dst, host, f"127.0.0.1:{port}", vcfg)


@pytest.fixture
async def env(sites: Sites) -> AsyncIterator[ContractEnv]:
    platform = VspherePlatform(sites.cfg)
    for vm in ("running-1", "stopped-1"):
        await platform.attach_filter(vm)  # the storage policy step an operator runs first

    async def make_shadows(vm: str, closed: bool) -> list[ShadowDisk]:
        return await open_shadows(platform, sites.sink, vm, closed)

    yield ContractEnv(platform, "running-1", "stopped-1", sites.sink, make_shadows)
    await platform.close()
    assert not sites.host.errors, sites.host.errors


class TestVspherePlatform(PlatformContract):
    """Every contract test, on vsphere."""


# -- vsphere specifics ---------------------------------------------------------

async def test_inventory_shows_disks_policy_and_flat_files(sites: Sites) -> None:
    platform = VspherePlatform(sites.cfg)
    try:
        before = await platform.vm("running-1")
        assert [(d.name, d.size, d.capture_policy) for d in before.disks] == [
            ("scsi0-0", 4 * MiB, ""), ("scsi0-1", 2 * MiB, "")]
        assert all(d.image.name.endswith("-flat.vmdk") and d.image.stat().st_size == d.size for d in before.disks)
        after = await platform.attach_filter("running-1")
        policy = after.disks[0].capture_policy
        assert policy and all(d.capture_policy == policy for d in after.disks)
        assert [d.capture_policy for d in (await platform.vm("stopped-1")).disks] == [""]
        await platform.attach_filter("running-1")  # again: nothing to do, same policy
        assert {d.capture_policy for d in (await platform.vm("running-1")).disks} == {policy}
    finally:
        await platform.close()


async def test_migrating_a_vm_without_the_policy_is_refused(sites: Sites) -> None:
    platform = VspherePlatform(sites.cfg)
    try:
        with pytest.raises(NotCapturable, match="does not have the liftshift capture policy") as e:
            await platform.preflight("running-1")
        assert "liftshift vsphere attach-filter running-1" in (e.value.hint or "")
        with pytest.raises(NotCapturable):
            await platform.attach_capture("running-1")
        assert not list(sites.host.ring_dir.rglob("*.ring")), "a refused attach created rings"
    finally:
        await platform.close()


async def test_independent_nonpersistent_disk_is_refused_everywhere(sites: Sites) -> None:
    make_vm(sites.src, "scratch-1", (2 * MiB, 2 * MiB), disk_modes=("persistent", "independent_nonpersistent"))
    sites.host.prepare(["scratch-1"])
    platform = VspherePlatform(sites.cfg)
    try:
        with pytest.raises(NotCapturable, match="independent-nonpersistent"):
            await platform.attach_filter("scratch-1")
        info = await platform.vm("scratch-1")
        assert [d.capture_policy for d in info.disks] == ["", ""], "a refused attach-filter changed a disk"
        with pytest.raises(NotCapturable, match="independent-nonpersistent"):
            await platform.preflight("scratch-1")
    finally:
        await platform.close()


async def test_unreadable_datastore_and_sparse_disk_are_refused(sites: Sites) -> None:
    platform = VspherePlatform(VsphereConfig(**{**sites.cfg.__dict__, "datastores": {}}))
    try:
        await platform.attach_filter("running-1")
        with pytest.raises(FailedPrecondition, match="datastore 'LocalDS_0', which this daemon cannot read"):
            await platform.preflight("running-1")
    finally:
        await platform.close()
    platform = VspherePlatform(sites.cfg)
    try:
        desc = (await platform.vm("running-1")).disks[1].image.with_name("running-1_1.vmdk")
        desc.write_text(desc.read_text().replace('createType="vmfs"', 'createType="seSparse"'))
        with pytest.raises(FailedPrecondition, match="seSparse"):
            await platform.preflight("running-1")
    finally:
        await platform.close()


async def test_unknown_vm_wrong_password_and_destination_not_created(sites: Sites) -> None:
    platform = VspherePlatform(sites.cfg)
    try:
        with pytest.raises(NotFound, match="no VM 'ghost' on the source vCenter") as e:
            await platform.attach_filter("ghost")
        assert "running-1" in (e.value.hint or "")
        assert await platform.destination_power("running-1", sites.sink) is Power.NOT_CREATED
        with pytest.raises(NotFound, match="no shadow VM 'running-1'"):
            await platform.power_on_destination("running-1", sites.sink)
    finally:
        await platform.close()
    wrong = VsphereSide(url=sites.src.url, user=sites.src.username, password="wrong", ca_file=sites.src.cert_file)
    platform = VspherePlatform(VsphereConfig(**{**sites.cfg.__dict__, "source": wrong}))
    try:
        with pytest.raises(Unauthenticated):
            await platform.inventory()
    finally:
        await platform.close()


async def test_create_destination_needs_the_shadow_vdisks_at_the_sink(sites: Sites) -> None:
    platform = VspherePlatform(sites.cfg)
    try:
        with pytest.raises(FailedPrecondition, match="has no shadow vdisk 'm-x.stopped-1.scsi0-0'"):
            await platform.create_destination("stopped-1", sites.sink, "m-x", [ShadowDisk("scsi0-0",
                                                                                         "m-x.stopped-1.scsi0-0")])
        assert await platform.destination_power("stopped-1", sites.sink) is Power.NOT_CREATED
    finally:
        await platform.close()
