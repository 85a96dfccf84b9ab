"""Configuration errors name the key and the file; environment overrides apply."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from liftshift.daemon import config
from liftshift.daemon.errors import ConfigError
from liftshift.daemon.settings import DaemonConfig


def write(tmp_path: Path, text: str) -> Path:
    """A daemon config with ``text``; plain text on loopback unless the text has its own [tls]."""
    p = tmp_path / "daemon.toml"
    p.write_text(text + ("" if "[tls]" in text else "\n[tls]\ninsecure = true\n"))
    return p


def test_defaults_and_sizes(tmp_path: Path) -> None:
    cfg = config.load(DaemonConfig, write(tmp_path, 'chunk_size = "2MiB"\nmax_inflight = "64 MiB"\n'),
                      "LIFTSHIFT_DAEMON_", environ={})
    assert cfg.chunk_size == 2 << 20 and cfg.max_inflight == 64 << 20 and cfg.read_ahead == 4


@pytest.mark.parametrize("text,needle", [
    ("chunk_sise = 1\n", "unknown key 'chunk_sise'"),
    ('read_ahead = "many"\n', "key 'read_ahead': expected an integer"),
    ("chunk_size = 3000\n", "key 'chunk_size'"),
    ("[[replicate]]\nvdisk_id = \"a\"\n", "required key 'replicate[0].ring' is missing"),
    ('[[replicate]]\nvdisk_id = "../x"\nring = "r"\nsource = "s"\nsink = "h:1"\n', "not a valid vdisk id"),
    ("listen = \n", "not valid TOML"),
    ("preverify_quiet_s = -1\n", "key 'preverify_quiet_s': -1.0 must be in [0, 3600]"),
])
def test_errors_name_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(DaemonConfig, path, "LIFTSHIFT_DAEMON_", environ={})
    assert needle in str(info.value) and str(path) in str(info.value)


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "read_ahead = 2\n")
    cfg = config.load(DaemonConfig, path, "LIFTSHIFT_DAEMON_", environ={"LIFTSHIFT_DAEMON_READ_AHEAD": "7"})
    assert cfg.read_ahead == 7
    with pytest.raises(ConfigError, match="LIFTSHIFT_DAEMON_READ_AHEAD"):
        config.load(DaemonConfig, path, "LIFTSHIFT_DAEMON_", environ={"LIFTSHIFT_DAEMON_READ_AHEAD": "x"})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        config.load(DaemonConfig, tmp_path / "nope.toml", "LIFTSHIFT_DAEMON_", environ={})


def test_daemon_refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "frame_bytes = 1\n")
    out = subprocess.run([sys.executable, "-m", "liftshift.daemon.main", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "frame_bytes" in out.stderr and str(path) in out.stderr


_VSPHERE = '''platform = "vsphere"
[vsphere]
datastores = { ds1 = "/vmfs/volumes/ds1" }
[vsphere.source]
url = "https://vc-src.example:443/sdk"
user = "liftshift@vsphere.local"
password_env = "SRC_PW"
[vsphere.destination]
url = "https://vc-dst.example"
user = "liftshift@vsphere.local"
password_file = "/etc/liftshift/dst.pw"
network_map = { "VM Network" = "tenant-42" }
'''


def test_vsphere_platform_config(tmp_path: Path) -> None:
    cfg = config.load(DaemonConfig, write(tmp_path, _VSPHERE), "LIFTSHIFT_DAEMON_", environ={})
    assert cfg.platform == "vsphere"
    assert cfg.vsphere.source.host_port() == ("vc-src.example", 443)
    assert cfg.vsphere.destination.network_map == {"VM Network": "tenant-42"}
    assert cfg.vsphere.datastores == {"ds1": "/vmfs/volumes/ds1"}
    # The sim platform's VMs need no vCenter: empty vsphere sides are fine there.
    assert config.load(DaemonConfig, write(tmp_path, ""), "LIFTSHIFT_DAEMON_", environ={}).platform == "sim"


@pytest.mark.parametrize(("change", "needle"), [
    (('url = "https://vc-dst.example"\n', ""), "key 'vsphere.destination.url' is required"),
    (('url = "https://vc-src.example:443/sdk"', 'url = "http://vc-src.example"'), "'vsphere.source.url'"),
    (('password_env = "SRC_PW"', 'password_env = "SRC_PW"\npassword = "x"'), "set exactly one of password"),
    (('"/vmfs/volumes/ds1"', '"relative/dir"'), "vsphere.datastores"),
    (('platform = "vsphere"', 'platform = "hyperv"'), "not a known platform (known: sim, vsphere, qemu)"),
])
def test_vsphere_config_errors_name_the_key(tmp_path: Path, change: tuple[str, str], needle: str) -> None:
    assert change[0] in _VSPHERE
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config.load(DaemonConfig, write(tmp_path, _VSPHERE.replace(*change)), "LIFTSHIFT_DAEMON_", environ={})


def test_vsphere_example_config_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "daemon" / "daemon.vsphere.example.toml"
    cfg = config.load(DaemonConfig, example, "LIFTSHIFT_DAEMON_", environ={})
    assert cfg.platform == "vsphere" and cfg.vsphere.destination.datastore == "vsanDatastore"


def test_qemu_example_config_loads_and_qemu_errors_name_the_key(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "daemon" / "daemon.qemu.example.toml"
    cfg = config.load(DaemonConfig, example, "LIFTSHIFT_DAEMON_", environ={})
    assert cfg.platform == "qemu" and [v.name for v in cfg.qemu.vm] == ["web-1", "db-1"]
    assert cfg.qemu.vm[1].headless and cfg.qemu.vm[1].disks[0].size == 20 << 30
    for text, needle in (
        ('platform = "qemu"\n[qemu]\naccel = "hvf"\n', "key 'qemu.accel'"),
        ('platform = "qemu"\n[[qemu.vm]]\nname = "a b"\n[[qemu.vm.disks]]\nname = "d"\nimage = "/x"\n',
         "key 'qemu.vm.name'"),
        ('platform = "qemu"\n[[qemu.vm]]\nname = "a"\n', "key 'qemu.vm.disks'"),
        ('platform = "qemu"\n[[qemu.vm]]\nname = "a"\ninitrd = "/i"\n[[qemu.vm.disks]]\nname = "d"\nimage = "/x"\n',
         "has an initrd but no kernel"),
    ):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            config.load(DaemonConfig, write(tmp_path, text), "LIFTSHIFT_DAEMON_", environ={})
