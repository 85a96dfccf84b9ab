"""A loopback TCP proxy that a test can cut: every connection through it is
closed at once by :meth:`TcpProxy.cut`, as a failing link would.  With
``rate_bps`` it is also a slow link: the bytes towards the upstream share one
token bucket (GCRA, across connections), as a WAN link of that rate would."""

from __future__ import annotations

import socket
import threading
import time


class _Link:
    """A shared pace of ``rate`` bytes/s (a virtual clock; senders sleep until their slot)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + n / self.rate
        if slot > now:
            time.sleep(slot - now)


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``upstream`` until cut or closed."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", rate_bps: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.link = _Link(rate_bps) if rate_bps else None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b, link in ((client, server, self.link), (server, client, None)):
                threading.Thread(target=self._pump, args=(a, b, link), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, link: _Link | None = None) -> None:
        try:
            while data := src.recv(64 << 10 if link else 1 << 20):
                if link is not None:
                    link.take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every open connection (new ones are accepted again)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.cuts += 1

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()


def main() -> None:
    """``python tests/tcpproxy.py UPSTREAM_PORT RATE_BPS PORT_FILE``: a proxy in a process of its own
    (a slow link must not share the test's GIL: polling in the test would slow it down)."""
    import os
    import sys

    upstream, rate, port_file = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    proxy = TcpProxy(upstream, rate_bps=rate)
    tmp = f"{port_file}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{proxy.port}\n")
    os.replace(tmp, port_file)
    threading.Event().wait()


if __name__ == "__main__":
    main()
