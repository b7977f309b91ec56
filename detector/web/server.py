"""Serving the demo app with waitress (a production WSGI server, not Flask's development one)."""

from __future__ import annotations

from flask import Flask

__all__ = ["make_server", "server_url"]


def make_server(app: Flask, *, host: str = "127.0.0.1", port: int = 8000, threads: int = 4):
    """A bound (not yet running) waitress server; ``port=0`` picks a free port.
    Call ``.run()`` to serve (blocks) and ``.close()`` to stop.

    Raises:
        OSError: the address cannot be bound (port in use, unknown host, no permission).
    """
    from waitress import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="detector")


def server_url(server) -> str:
    """``http://host:port/`` of a server from ``make_server``."""
    host = server.effective_host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.effective_port}/"
