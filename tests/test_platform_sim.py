"""The platform contract suite against the built-in ``sim`` platform.

The adapter runs in the test process (its guests are real
``liftshift-workload`` processes); the destination is a real sink process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e import free_port
from platform_contract import ContractEnv, PlatformContract, open_shadows
from procs import python_module, start_process
from simsite import Site

from liftshift.daemon.platform import ShadowDisk
from liftshift.daemon.settings import SimConfig, SimDisk, SimVm, SimWorkload
from liftshift.daemon.sim import SimPlatform

MiB = 1 << 20


@pytest.fixture
async def env(tmp_path: Path, shm_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[ContractEnv]:
    port = free_port()
    data = tmp_path / "sink-data"
    cfg = tmp_path / "sink.toml"
    cfg.write_text(f'listen = "127.0.0.1:{port}"\ndata_dir = "{data}"\nstop_vms_on_exit = true\ninsecure = true\n')
    start_process(python_module("liftshift.sink.main", "--config", cfg, "--port-file", tmp_path / "sink.port"),
                  tmp_path / "sink.port", cleanup=request.addfinalizer)
    # Kills any guest left behind (source or destination), whatever the test did.
    Site(tmp_path, shm_dir, [], request.addfinalizer).data = data
    workload = SimWorkload(rate_ops=500, block_size=4096)
    sim = SimConfig(dir=tmp_path / "sim", ring_dir=shm_dir, ring_capacity=1 * MiB, vm=[
        SimVm(name="running-1", disks=[SimDisk("disk0", 4 * MiB, None, 1 * MiB), SimDisk("disk1", 2 * MiB)],
              workload=workload),
        SimVm(name="stopped-1", disks=[SimDisk("disk0", 2 * MiB)], workload=workload, power_on=False),
    ])
    platform = SimPlatform(sim, tmp_path / "sim")
    await platform.power_on("running-1")
    # The powered-off VM needs its image: create it as power-on would, then stop it.
    await platform.power_on("stopped-1")
    await platform.stop_source("stopped-1")
    destination = f"127.0.0.1:{port}"

    async def make_shadows(vm: str, closed: bool) -> list[ShadowDisk]:
        return await open_shadows(platform, destination, vm, closed)

    yield ContractEnv(platform, "running-1", "stopped-1", destination, make_shadows)
    await platform.power_off_all()
    await platform.close()


class TestSimPlatform(PlatformContract):
    """Every contract test, on sim."""


async def test_sim_guest_keeps_running_when_the_platform_object_goes(env: ContractEnv) -> None:
    """Sim VMs outlive the daemon (like real VMs): a new adapter finds them running."""
    platform = env.platform
    assert isinstance(platform, SimPlatform)
    again = SimPlatform(platform.cfg, platform.dir)
    info = await again.vm("running-1")
    assert info.power.value == "on"
    await again.close()
