"""The sink daemon's configuration: one dataclass, each key with its default and help.

Design note
-----------
Loaded by :func:`liftshift.daemon.config.load` from a TOML file plus
``LIFTSHIFT_SINK_<KEY>`` environment overrides; :meth:`SinkConfig.check`
runs at load time so a bad value stops the daemon before it listens, with an
error naming the key and the file.  Relative paths are taken relative to the
working directory.  ``--print-config-reference`` renders
:func:`reference_markdown` for the README, so the documentation cannot drift
from the defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from liftshift.daemon.config import describe, doc, host_port, load
from liftshift.daemon.errors import ConfigError

ENV_PREFIX = "LIFTSHIFT_SINK_"
STATE_SUBDIR = ".liftshift-sink"
LOG_LEVELS = ("debug", "info", "warning", "error")
# gRPC message lengths are C ints; keep well below 2 GiB.
MAX_MESSAGE_CAP = 1 << 30
MIN_MESSAGE = 64 << 10


@dataclass
class SinkConfig:
    """Everything the sink daemon reads from its configuration file."""

    data_dir: Path = doc(help="Directory holding the shadow vdisks (`<id>-flat.vmdk` and `<id>.vmdk`). "
                              "Required; created if missing.")
    listen: str = doc("127.0.0.1:50061", "gRPC listen address `host:port`; port 0 picks a free port "
                                         "(see `--port-file`).")
    state_dir: Path | None = doc(None, "Directory of the sink's SQLite state (`sink.db`); "
                                       "default `<data_dir>/.liftshift-sink`.")
    fsync_window_ms: float = doc(5.0, "Group-commit window: while frames keep arriving, one fdatasync covers "
                                      "at most this many milliseconds of them (a stream that goes idle is "
                                      "synced at once).")
    max_message: int = doc(16 << 20, "Largest gRPC message accepted or sent, set explicitly on the server; "
                                     "bigger frames fail with RESOURCE_EXHAUSTED.", size=True)
    stream_buffer: int = doc(64 << 20, "Bytes of received frames buffered per Replicate stream while "
                                       "earlier ones are applied and synced (at least one frame always fits).",
                             size=True)
    max_hash_chunks: int = doc(65536, "Most chunks one HashRanges call may ask for.")
    tls_cert: Path | None = doc(None, "PEM server certificate the sink presents (`liftshift certs issue DIR NAME "
                                      "--server --san HOST`); mutual TLS is on by default.")
    tls_key: Path | None = doc(None, "Its private key.")
    tls_ca: Path | None = doc(None, "CA certificate(s) clients (the source daemon, `seed import`) must chain to; "
                                    "a client certificate from any other CA is refused in the handshake.")
    tokens_file: Path | None = doc(None, "Bearer tokens accepted besides client certificates "
                                         "(`name role sha256-of-token` lines).")
    insecure: bool = doc(False, "Plain text, every caller admin: only on a loopback `listen` address, logged as "
                                "a warning (demo, tests).")
    reserve_free_bytes: int = doc(1 << 30, "Free space a seed import leaves in `data_dir`: an import whose data "
                                           "would eat into it is refused before anything is written.", size=True)
    shutdown_grace_s: float = doc(5.0, "On SIGTERM, seconds in-flight RPCs get to finish before they are "
                                       "cancelled; everything applied is then synced.")
    log_level: str = doc("info", "Log level: debug, info, warning or error.")
    stop_vms_on_exit: bool = doc(False, "Power off the destination VMs this sink started when it stops (demo "
                                        "and tests); by default they keep running like real VMs.")
    metrics_listen: str = doc("", "Prometheus `/metrics` address `host:port` (`[::1]:9101` for IPv6; empty: "
                                  "off): per vdisk bytes and records applied, applied and durable sequence, "
                                  "apply and fsync latency histograms, open streams.")

    @property
    def state_path(self) -> Path:
        """The state directory, with its default applied."""
        return self.state_dir if self.state_dir is not None else self.data_dir / STATE_SUBDIR

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid key."""
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"key 'listen': expected host:port with a port in 0-65535, got {self.listen!r}")
        if not str(self.data_dir):
            raise ConfigError("key 'data_dir': must not be empty")
        if self.state_dir is not None and not str(self.state_dir):
            raise ConfigError("key 'state_dir': must not be empty (leave it out for the default)")
        if not 0 <= self.fsync_window_ms <= 10_000:
            raise ConfigError(f"key 'fsync_window_ms': expected 0-10000, got {self.fsync_window_ms}")
        if not MIN_MESSAGE <= self.max_message <= MAX_MESSAGE_CAP:
            raise ConfigError(f"key 'max_message': expected {MIN_MESSAGE} to {MAX_MESSAGE_CAP} bytes, "
                              f"got {self.max_message}")
        if self.stream_buffer < MIN_MESSAGE:
            raise ConfigError(f"key 'stream_buffer': expected at least {MIN_MESSAGE} bytes, got {self.stream_buffer}")
        if not 1 <= self.max_hash_chunks <= 1 << 20:
            raise ConfigError(f"key 'max_hash_chunks': expected 1 to {1 << 20}, got {self.max_hash_chunks}")
        if not self.insecure:
            for key in ("tls_cert", "tls_key", "tls_ca"):
                if getattr(self, key) is None:
                    raise ConfigError(f"key '{key}' is required: mutual TLS is on by default (`liftshift certs init "
                                      "DIR` makes a quick-start CA and certificates; insecure = true listens in "
                                      "plain text on loopback only)")
        if self.reserve_free_bytes < 0:
            raise ConfigError(f"key 'reserve_free_bytes': must not be negative, got {self.reserve_free_bytes}")
        if not 0 <= self.shutdown_grace_s <= 3600:
            raise ConfigError(f"key 'shutdown_grace_s': expected 0-3600, got {self.shutdown_grace_s}")
        if self.metrics_listen:
            host_port(self.metrics_listen, "metrics_listen")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"key 'log_level': expected one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")

    @property
    def log_level_number(self) -> int:
        """``log_level`` as a :mod:`logging` level."""
        return int(getattr(logging, self.log_level.upper()))


def load_config(path: str | None, environ: dict[str, str] | None = None) -> SinkConfig:
    """Load and check the sink configuration (file plus ``LIFTSHIFT_SINK_*``)."""
    return load(SinkConfig, path, ENV_PREFIX, environ)


def reference_markdown() -> str:
    """The configuration reference as a markdown table (key, default, env var, help)."""
    lines = ["| key | default | environment | description |", "|---|---|---|---|"]
    for key, default, help_text in describe(SinkConfig):
        shown = default.replace("|", "\\|")
        lines.append(f"| `{key}` | `{shown}` | `{ENV_PREFIX}{key.upper()}` | {help_text} |")
    return "\n".join(lines) + "\n"
