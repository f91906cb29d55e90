"""`wastecls serve`: open the model once, check where it may listen, build the app."""

from __future__ import annotations

from waste_cli.core.console import Reporter
from waste_cli.core.errors import ConfigError
from waste_cli.core.extras import require
from waste_cli.core.network import MIN_TOKEN, Server, check_token, is_loopback, listen
from waste_cli.infer.answers import classify_options
from waste_cli.infer.core import open_model
from waste_cli.model.builtin import find_model, model_name
from waste_cli.options import ServeOptions

__all__ = ["prepare_server"]


def prepare_server(options: ServeOptions, reporter: Reporter) -> tuple[Server, str]:
    """The app for `options` and the model's name; a host other than loopback without a
    token is refused."""
    if not is_loopback(options.host) and options.token is None:
        raise ConfigError(f"--host {options.host} would open the model to the network: give "
                          f"--token (at least {MIN_TOKEN} characters) that every request must "
                          "send, or keep the default 127.0.0.1.")
    check_token(options.token)
    require("serve", "serve", "fastapi", "uvicorn", "multipart")
    from waste_cli.serve.app import ServeLimits, create_app

    path = find_model(options.model, reporter)
    runner = open_model(path, options.device, options.backend, reporter)
    limits = ServeLimits(options.max_bytes, options.max_batch, options.batch_wait_ms,
                         options.token)
    name = model_name(path)
    app = create_app(runner, classify_options(options, runner.classes), limits, name)
    return listen(app, options.host, options.port), name
