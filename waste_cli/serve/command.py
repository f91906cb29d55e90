"""`wastecls serve`: open the model once, check where it may listen, build the app."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError
from waste_cli.core.extras import require
from waste_cli.infer.answers import classify_options
from waste_cli.infer.core import open_model
from waste_cli.model.builtin import find_model, model_name
from waste_cli.options import ServeOptions

__all__ = ["Server", "loopback", "prepare_server"]

MIN_TOKEN = 16


def loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Server:
    app: Any
    host: str
    port: int
    url: str
    model: str


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def prepare_server(options: ServeOptions, reporter: Reporter) -> Server:
    """The app for `options`; a host other than loopback without a token is refused."""
    if not loopback(options.host) and options.token is None:
        raise ConfigError(f"--host {options.host} would open the model to the network: give "
                          f"--token (at least {MIN_TOKEN} characters) that every request must "
                          "send, or keep the default 127.0.0.1.")
    if options.token is not None and len(options.token) < MIN_TOKEN:
        raise ConfigError(f"--token must be at least {MIN_TOKEN} characters.")
    require("serve", "serve", "fastapi", "uvicorn", "multipart")
    from waste_cli.serve.app import ServeLimits, create_app

    path = find_model(options.model, reporter)
    runner = open_model(path, options.device, options.backend, reporter)
    limits = ServeLimits(options.max_bytes, options.max_batch, options.batch_wait_ms,
                         options.token)
    name = model_name(path)
    app = create_app(runner, classify_options(options, runner.classes), limits, name)
    port = options.port or free_port(options.host)
    shown = f"[{options.host}]" if ":" in options.host else options.host
    return Server(app, options.host, port, f"http://{shown}:{port}/", name)
