"""``liftshift-daemon``: the source daemon's entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from liftshift.iofilter.alloc import freeze_gc, tune_malloc
from liftshift.v1 import control_pb2, control_pb2_grpc

from . import access, config, estimator_model, service
from .control import ControlServicer
from .control_audit import AuditInterceptor, audit_refusal, check_log, daemon_resolvers, open_log
from .errors import LiftshiftError
from .estimator import Estimates
from .guestcap import GuestCaps
from .lifecycle import FINAL
from .migrations import Migrations
from .platform import Platform
from .seed import Seeds
from .settings import DaemonConfig
from .sim import SimPlatform
from .state import StateStore
from .stats import StatsStore
from .stats_collector import StatsCollector
from .throttling import Throttling
from .vdisk import VdiskReplicator

log = logging.getLogger("liftshift.daemon")


def make_platform(cfg: DaemonConfig) -> Platform:
    """The platform adapter the configuration names (pyvmomi is imported only for vsphere)."""
    if cfg.platform == "vsphere":
        from .vsphere_platform import VspherePlatform

        return VspherePlatform(cfg.vsphere, cfg.max_message)
    if cfg.platform == "qemu":
        from .qemu_platform import QemuPlatform

        return QemuPlatform(cfg.qemu, cfg.qemu.dir or cfg.state_dir / "qemu", cfg.max_message)
    return SimPlatform(cfg.sim, cfg.sim.dir or cfg.state_dir / "sim", cfg.max_message)


async def serve(cfg: DaemonConfig, port_file: Path | None, config_path: Path | None = None) -> None:
    """Run the daemon until SIGTERM."""
    audit = open_log(cfg.state_dir)  # AuditInUse: another daemon runs on this state directory
    auditor = AuditInterceptor(audit)
    tls = cfg.tls
    access.client_credentials(insecure=tls.insecure, ca=tls.ca, cert=tls.client_cert, key=tls.client_key)
    # Refused calls are audited too (who tried, from where, what).
    control_access = access.server_access("the Control service", cfg.listen, access.CONTROL_ROLES,
                                          insecure=tls.insecure, cert=tls.cert, key=tls.key, ca=tls.ca,
                                          tokens_file=tls.tokens_file, on_refused=audit_refusal(audit),
                                          front=True)
    store = StateStore(cfg.state_dir / "daemon.db")
    replicators: dict[str, VdiskReplicator] = {}
    server = service.make_server(cfg.max_message, outer=[control_access.interceptor], inner=[auditor])

    platform = make_platform(cfg)
    migrations = Migrations(cfg, store, platform, replicators)
    estimates = Estimates(store, platform, cfg.max_message)
    migrations.before_capture = estimates.release_vm  # a migration takes a VM's rings over
    seeds = Seeds(cfg, store, platform)
    migrations.seeds = seeds
    stats = StatsCollector(StatsStore(cfg.state_dir / "daemon.db"), migrations, replicators)

    def busy(vm: str) -> str | None:
        m = migrations.migration_of(vm)
        if m is not None:
            return f"is in migration {m.id} ({m.state})"
        e = estimates.observing(vm)
        return f"is being observed by estimate {e.id}" if e is not None else None

    seeds.busy = busy
    auditor.resolvers = daemon_resolvers(migrations, estimates, seeds)
    throttling = Throttling(cfg.throttle, store)
    guest_caps = GuestCaps(store, migrations, seeds)
    migrations.limiters = throttling.limiters
    migrations.guest_cap = guest_caps.per_disk

    def migration_active(mid: str) -> bool:
        m = migrations.recs.get(mid)
        if m is None:
            return any(r.spec.migration_id == mid for r in replicators.values())
        return m.state not in FINAL

    throttling.active = migration_active

    async def start():  # type: ignore[no-untyped-def]
        for spec in cfg.replicate:
            replicators[spec.vdisk_id] = VdiskReplicator(spec, cfg, store)
            replicators[spec.vdisk_id].limiters = throttling.limiters
        power_on_all = getattr(platform, "power_on_all", None)
        if power_on_all is not None:  # sim and qemu VMs defined in the configuration
            await power_on_all()
        def assumptions() -> estimator_model.Assumptions:
            stop, power_on = migrations.cutover_medians()
            return estimator_model.Assumptions(converge_threshold=cfg.converge_threshold,
                                               ship_days=cfg.sneakernet_ship_days,
                                               preverify_bps=cfg.preverify_bytes_per_s,
                                               copy_efficiency=cfg.estimate_copy_efficiency,
                                               stop_s=stop if stop is not None else platform.typical_stop_s,
                                               power_on_s=power_on if power_on is not None
                                               else platform.typical_power_on_s)

        control = ControlServicer(replicators, platform, migrations, estimates, assumptions, seeds, audit,
                                  throttling, guest_caps)
        control.enable_stats(stats.store, cfg.max_message)
        control_pb2_grpc.add_ControlServicer_to_server(control, server)
        names = [control_pb2.DESCRIPTOR.services_by_name["Control"].full_name]
        hs = service.add_health_and_reflection(server, names)
        port = await control_access.listen(server, cfg.listen)
        await seeds.resume()  # before migrations: a seeded VM's first start takes its tracker over
        await migrations.start()  # the limits (set by hand, and the schedule's) are in force already
        throttling.start()
        await estimates.resume()
        await asyncio.to_thread(check_log, audit)  # not intact: serve, but refuse every audited action
        stats.start()
        if cfg.metrics_listen:
            stats.serve_metrics(cfg.metrics_listen)
        guest_caps.start()
        await server.start()
        for r in replicators.values():
            r.start()
        await service.mark_serving(hs, names)
        if port_file is not None:
            tmp = port_file.with_name(f".{port_file.name}.tmp")
            tmp.write_text(f"{port}\n")
            tmp.replace(port_file)  # a reader never sees half a number
        freeze_gc()
        vms = getattr(platform, "vms", None)
        where = (f"with {len(vms)} VM(s)" if vms is not None
                 else f"source {cfg.vsphere.source.url}, destination {cfg.vsphere.destination.url}")
        log.info("liftshift-daemon listening on %s (port %d, %s), platform %s %s, %d migration(s)",
                 cfg.listen, port, "plain text" if tls.insecure else "mutual TLS", platform.name, where,
                 len(migrations.recs))

        async def stop() -> None:
            await control_access.close()
            await server.stop(5)
            await stats.stop()
            await guest_caps.stop()
            await throttling.stop()
            await estimates.stop_all()
            await seeds.stop_all()
            await migrations.stop()
            for r in replicators.values():
                await r.stop()
            await platform.close()
            store.close()
            audit.close()

        return stop

    async def reload() -> None:
        """SIGHUP: re-read the file and apply ``log_level`` and ``[throttle]``; other keys need a restart."""
        try:
            new = config.load(DaemonConfig, config_path, "LIFTSHIFT_DAEMON_")
        except LiftshiftError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        logging.getLogger().setLevel(new.log_level.upper())
        throttling.reload(new.throttle)
        log.info("reloaded %s: log_level=%s, [throttle] (other keys take effect at restart)", config_path,
                 new.log_level)

    await service.run(start, reload)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="liftshift-daemon", description="liftshift source daemon")
    ap.add_argument("--config", type=Path, help="TOML configuration file")
    ap.add_argument("--port-file", type=Path, help="write the bound control port here once listening")
    ap.add_argument("--print-config-reference", action="store_true", help="print every key, default and help")
    args = ap.parse_args(argv)
    if args.print_config_reference:
        print("| key | default | meaning |\n|---|---|---|")
        for key, default, text in config.describe(DaemonConfig):
            shown = default.replace("|", "\\|")
            print(f"| `{key}` | `{shown}` | {text} |")
        return 0
    try:
        cfg = config.load(DaemonConfig, args.config, "LIFTSHIFT_DAEMON_")
    except LiftshiftError as e:
        print(f"liftshift-daemon: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tune_malloc()
    try:
        service.main_loop(lambda: serve(cfg, args.port_file, args.config))
    except LiftshiftError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
