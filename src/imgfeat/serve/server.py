"""Running the app: bind first (so the printed address is the real one, port 0 included), then hand
the socket to uvicorn. ``Background`` runs a server in a thread for tests and benchmarks."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from typing import Optional

from ..errors import ImgfeatError, require
from .app import ServeConfig, create_app
from .collection import Collection
from .security import is_loopback


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response's head and body leave at once, instead of the body
    # waiting ~40 ms for the client's delayed ACK on a kept-alive connection (Nagle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ImgfeatError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{f'[{shown}]' if ':' in shown and not shown.startswith('[') else shown}:{port}/"


def warnings_for(config: ServeConfig) -> list[str]:
    if is_loopback(config.host):
        return []
    lines = [f"listening on {config.host}, not only this machine: anyone who can reach port {config.port} "
             "can use the app"]
    if not config.token:
        lines.append("no --token given: every visitor can search and see every thumbnail; pass --token SECRET")
    return lines


def one_thread_per_query():
    """While serving: one query per request, many requests at once, so each faiss search runs on one
    thread (OpenMP teams per query would oversubscribe the cores)."""
    from ..tools.knn import faiss_threads

    return faiss_threads(1)


def _uvicorn_server(app, log_level: str = "warning"):
    uvicorn = require("uvicorn", "serve", "imgfeat serve")
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_keep_alive=30,
                            limit_concurrency=1024)
    return uvicorn.Server(config)


def run(collection: Collection, config: ServeConfig, open_browser: bool = False, out=sys.stderr) -> None:
    """Serve until Ctrl-C."""
    app = create_app(collection, config)
    sock = bind(config.host, config.port)
    url = url_of(sock, config.host)
    for line in warnings_for(config):
        print(f"imgfeat serve: WARNING: {line}", file=out)
    shown = url + (f"?token={config.token}" if config.token else "")
    print(f"imgfeat serve: {collection.n} vectors of {collection.path} at {shown}  (Ctrl-C stops)", file=out,
          flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, (shown,)).start()
    server = _uvicorn_server(app)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: with the default handler that kills the
    # process before the decode workers are stopped, so it becomes a KeyboardInterrupt, as Ctrl-C is.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with one_thread_per_query():
            server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        app.state.pool.close()
        sock.close()


def _interrupt(signum, frame):
    raise KeyboardInterrupt()


class Background:
    """``with Background(collection, config) as srv: srv.url`` - a real server on a loopback port in a thread."""

    def __init__(self, collection: Collection, config: Optional[ServeConfig] = None,
                 start_timeout: float = 600.0) -> None:
        # start_timeout only bounds a server that never starts (a loaded machine may take many seconds)
        self.config = config or ServeConfig(port=0)
        self.start_timeout = start_timeout
        self.app = create_app(collection, self.config)
        self.sock = bind(self.config.host, self.config.port)
        self.url = url_of(self.sock, self.config.host)
        self.server = _uvicorn_server(self.app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Background":
        self._threads = one_thread_per_query()
        self._threads.__enter__()
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ImgfeatError(f"the server did not start within {self.start_timeout:g} s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.start_timeout)
        self.app.state.pool.close()
        self.sock.close()
        self._threads.__exit__(None, None, None)
