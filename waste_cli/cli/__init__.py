"""The `wastecls` command: the Typer app (app), its flags (flags), what it prints (render) and
where settings come from (sources). The only place settings objects are built."""

from waste_cli.cli.app import app, main

__all__ = ["app", "main"]
