"""Python producer process for the ring benchmark.

Usage: ring_pyproducer.py RING --size BYTES --records N [--interval-us U]

Writes N records of BYTES each (sequential offsets, wrapping on the disk),
optionally one every U microseconds (for wake-up latency), then closes.
"""

from __future__ import annotations

import argparse
import os
import time

from liftshift.iofilter import RingProducer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ring")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--interval-us", type=int, default=0)
    args = ap.parse_args()
    payload = os.urandom(args.size)
    with RingProducer(args.ring) as p:
        span = p.geometry.disk_size // args.size
        interval = args.interval_us / 1e6
        for i in range(args.records):
            p.write((i % span) * args.size, payload)
            if interval:
                time.sleep(interval)
        p.close()


if __name__ == "__main__":
    main()
