"""The statistics wiring without daemons: samples from readings, GetStats checks, sink meters, CLI usage."""

from __future__ import annotations

import pytest

from liftshift.ctl.main import build_parser, main
from liftshift.daemon.config import host_port
from liftshift.daemon.control_stats import check_request, row_from_pb, row_pb
from liftshift.daemon.errors import ConfigError, InvalidArgument
from liftshift.daemon.stats import Row
from liftshift.daemon.stats_collector import SampleBuilder, VdiskReading
from liftshift.sink.meters import SinkMeters
from liftshift.v1 import control_pb2 as cpb
from liftshift.v1 import replication_pb2 as pb

T0 = 1_700_000_040.0


def reading(vdisk: str, t: float, *, vm: str = "web", gen: int = 1, live: float = 0.0, writes: float = 0.0,
            lag: float = 0.0, applies: int = 0, apply_ns: int = 0) -> VdiskReading:
    return VdiskReading(vdisk, "m-1", vm, gen, counters={"live_bps": live, "write_iops": writes},
                        gauges={"lag_s": lag, "backlog_bytes": 100.0}, sink_apply_ns=apply_ns, sink_applies=applies)


def test_samples_per_scope_from_readings() -> None:
    b = SampleBuilder()
    assert b.build(T0, [reading("d1", T0), reading("d2", T0)]) == []  # baselines only
    got = b.build(T0 + 2, [reading("d1", T0, live=4000.0, writes=10, lag=0.5, applies=4, apply_ns=8_000_000),
                           reading("d2", T0, live=2000.0, writes=6, lag=1.5)])
    by = {(s.scope, s.key): s for s in got}
    assert set(by) == {("vdisk", "d1"), ("vdisk", "d2"), ("vm", "web"), ("migration", "m-1"), ("global", "")}
    assert by[("vdisk", "d1")].values["live_bps"] == 2000.0 and by[("vdisk", "d1")].dt == 2.0
    assert by[("vdisk", "d1")].values["sink_apply_ms"] == 2.0  # 8 ms over 4 acks
    assert "sink_apply_ms" not in by[("vdisk", "d2")].values  # no acks carried a time
    for key in (("vm", "web"), ("migration", "m-1"), ("global", "")):
        v = by[key].values
        assert v["live_bps"] == 3000.0 and v["write_iops"] == 8.0  # rates add up
        assert v["lag_s"] == 1.5 and v["backlog_bytes"] == 200.0  # lag: the worst; backlog: the sum

    # A replaced replicator (new generation) starts over: its counters restarted from 0.
    got = b.build(T0 + 3, [reading("d1", T0, gen=2, live=100.0), reading("d2", T0, live=2500.0, writes=7)])
    assert [(s.scope, s.key) for s in got][0] == ("vdisk", "d2") and len(got) == 4
    got = b.build(T0 + 4, [reading("d1", T0, gen=2, live=600.0)])  # d2 is gone
    assert {(s.scope, s.key) for s in got} == {("vdisk", "d1"), ("vm", "web"), ("migration", "m-1"), ("global", "")}
    assert got[0].values["live_bps"] == 500.0


def test_get_stats_checks_name_the_field() -> None:
    now = T0 + 7200
    assert check_request(cpb.StatsRequest(), now) == (now - 3600, None, None, None, None, "auto")
    assert check_request(cpb.StatsRequest(since=T0, until=T0 + 60, scope="vm", key="web", metrics=["lag_s"],
                                          resolution="1m"), now) == (T0, T0 + 60, "vm", "web", ["lag_s"], "1m")
    for field, req in (("scope", cpb.StatsRequest(scope="host")),
                       ("metrics", cpb.StatsRequest(metrics=["lag_s", "bogus"])),
                       ("resolution", cpb.StatsRequest(resolution="10s")),
                       ("since", cpb.StatsRequest(since=float("nan"))),
                       ("until", cpb.StatsRequest(since=T0, until=T0 - 1))):
        with pytest.raises(InvalidArgument, match=f"field '{field}'"):
            check_request(req, now)


def test_rows_travel_without_redundant_peaks() -> None:
    fine = Row(T0, "vdisk", "d1", 1, 1.0, {"live_bps": 5.0, "lag_s": 0.25}, {"lag_s": 0.25})
    coarse = Row(T0, "vm", "web", 60, 58.0, {"live_bps": 5.0, "lag_s": 0.25}, {"lag_s": 2.0})
    assert not row_pb(fine).peaks and row_pb(coarse).peaks["lag_s"] == 2.0
    assert row_from_pb(row_pb(fine)) == fine and row_from_pb(row_pb(coarse)) == coarse


def test_sink_meters_count_across_streams() -> None:
    meters = SinkMeters()
    m = meters.vdisk("d1", "m-1")
    m.streams += 1
    m.applied(4096, 1, 7)
    m.applied(1 << 20, 0, 7)
    m.acked(pb.Ack(applied_seq=7, durable_seq=7, apply_ns=300_000, fsync_ns=2_000_000))
    m.acked(pb.Ack(applied_seq=7, durable_seq=7))  # nothing new: no times
    assert meters.vdisk("d1") is m and m.migration == "m-1"
    snap = meters.snapshot()
    (d,) = snap.vdisks
    assert snap.streams == 1 and (d.vdisk, d.migration, d.applied_bytes, d.applied_records) == ("d1", "m-1",
                                                                                                 4096 + (1 << 20), 1)
    assert d.durable_seq == 7 and d.apply_seconds.count == 1 and d.fsync_seconds.sum == pytest.approx(0.002)


def test_host_port_and_cli_usage() -> None:
    assert host_port("127.0.0.1:9100", "metrics_listen") == ("127.0.0.1", 9100)
    assert host_port("[::1]:0", "metrics_listen") == ("::1", 0)
    for bad in ("9100", "host:", ":9100", "h:70000", "h:x"):
        with pytest.raises(ConfigError, match="metrics_listen"):
            host_port(bad, "metrics_listen")
    p = build_parser()
    args = p.parse_args(["stats", "--since", "6h", "--until", "2024-05-01T08:00", "--vm", "web", "--json"])
    assert args.since.ago == 6 * 3600 and args.until.at is not None and args.vm == "web" and args.json
    for argv in (["stats", "--vm", "a", "--migration", "m"], ["stats", "--csv", "--png", "x.png"],
                 ["stats", "--since", "yesterday"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)


@pytest.mark.parametrize("argv, complaint", [
    (["stats", "--csv", "--json"], "pick one"),
    (["stats", "--interval", "2s"], "--interval applies to --watch"),
    (["stats", "--watch", "--since", "1h"], "--since/--until do not apply"),
    (["stats", "--metric", "lag"], "'lag' is not a metric"),
])
def test_stats_usage_errors_exit_2(argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--address", "127.0.0.1:1", *argv])
    assert e.value.code == 2 and complaint in capsys.readouterr().err


def test_a_new_replicator_counts_from_its_start() -> None:
    b = SampleBuilder()
    first = VdiskReading("d1", "m-1", "web", 1, started=T0 - 0.5,
                         counters={"background_bps": 3e6, "live_bps": 0.0, "write_iops": 500.0}, gauges={})
    got = b.build(T0 + 1, [first])
    vd = got[0]
    # Shipped since it started 1.5 s ago; the ring's writes counted from before it: only from the next reading.
    assert (vd.scope, vd.dt, vd.values) == ("vdisk", 1.5, {"background_bps": 2e6, "live_bps": 0.0})
    again = b.build(T0 + 2, [VdiskReading("d1", "m-1", "web", 1, started=T0 - 0.5,
                                          counters={"background_bps": 4e6, "live_bps": 0.0, "write_iops": 560.0})])
    assert again[0].values == {"background_bps": 1e6, "live_bps": 0.0, "write_iops": 60.0}


def test_limit_is_the_replication_limit_in_force() -> None:
    from types import SimpleNamespace

    from liftshift.daemon.stats_collector import replication_limit
    from liftshift.daemon.throttle import Limiters

    lim = Limiters()
    r = SimpleNamespace(limiters=None, spec=SimpleNamespace(migration_id="m-1"))
    assert replication_limit(r) == 0  # type: ignore[arg-type]
    r.limiters = lim
    assert replication_limit(r) == 0  # type: ignore[arg-type]
    lim.set_global(30_000_000)
    assert replication_limit(r) == 30_000_000  # type: ignore[arg-type]
    lim.set_migration("m-1", 8_000_000)
    assert replication_limit(r) == 8_000_000  # type: ignore[arg-type]
    lim.set_migration("m-1", 50_000_000)  # the global limit is lower: it is the one in force
    assert replication_limit(r) == 30_000_000  # type: ignore[arg-type]
