"""Where a local server (`review`, `serve`) may listen, and the token that guards it when it
listens on more than this machine."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from waste_cli.core.errors import ConfigError

__all__ = ["MIN_TOKEN", "Server", "check_token", "is_loopback", "listen"]

MIN_TOKEN = 16  # characters: all that guards a page or an API on a network


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> None:
    if token is not None and len(token) < MIN_TOKEN:
        raise ConfigError(f"--token must be at least {MIN_TOKEN} characters: it is all that "
                          "guards the server on a network.")


def free_port(host: str) -> int:
    """A port nobody listens on at `host` now (for --port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """An app and where it will listen (the CLI hands it to uvicorn)."""

    app: Any
    host: str
    port: int
    url: str  # what to open; with the token in it when the page needs one


def listen(app: Any, host: str, port: int, token: str | None = None) -> Server:
    """`app` on `host`:`port` (0: a free port), and the address to print."""
    port = port or free_port(host)
    shown = f"[{host}]" if ":" in host else host
    return Server(app, host, port, f"http://{shown}:{port}/" + (f"?token={token}" if token
                                                                 else ""))
