"""Where a command's options come from: CLI flags > WASTECLS_* environment > config file >
defaults. Only `load_settings`, called by the CLI, builds a settings object; it hands the engine
the plain options (options.py) it resolved, so a variable set for one command never reaches
another's internals.

A config file holds top-level keys shared by several commands and/or one section per command:

    seed = 1            # any command that has a `seed` setting
    [train]
    arch = "resnet50"

List settings come from the environment as JSON (`["glass", "metal"]`) or comma-separated
(`glass,metal`).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from waste_cli.core.errors import ConfigError
from waste_cli.core.formats import read_structured
from waste_cli.options import COMMAND_OPTIONS, Options, flag_name

__all__ = ["ENV_PREFIX", "CommandSettings", "OptionsT", "load_settings"]

ENV_PREFIX = "WASTECLS_"


_CONFIG_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("wastecls_config", default=None)


OptionsT = TypeVar("OptionsT", bound=Options)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The lowest-priority source: values read from --config for the command being run."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_CONFIG_VALUES.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_CONFIG_VALUES.get() or {})


class _EnvSource(EnvSettingsSource):
    """WASTECLS_* variables; a list may also be written comma-separated (`glass,metal`)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return [item.strip() for item in str(value).split(",") if item.strip()]


class CommandSettings(BaseSettings):
    """The sources of a command's options: flags > WASTECLS_* > config file > defaults."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid",
                                      validate_default=True, allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvSource(settings_cls), _ConfigFileSource(settings_cls)


# Each command's settings class: its options with the sources on top (built by load_settings).
_SETTINGS: dict[str, type[CommandSettings]] = {
    name: type(f"{options.__name__.removesuffix('Options')}Settings", (CommandSettings, options),
               {"__module__": __name__})
    for name, options in COMMAND_OPTIONS.items()
}


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist (or is not a file).")
    if path.suffix.lower() not in {".toml", ".yaml", ".yml", ".json"}:
        raise ConfigError(f"Config file {path} must end in .toml, .yaml, .yml or .json.")
    try:
        data = read_structured(path) or {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of settings, not {data!r}.")
    return data


def _values_for(cls: type[Options], data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Top-level keys that this command has, overlaid by the command's own section."""
    all_fields = {name for model in COMMAND_OPTIONS.values() for name in model.model_fields}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in COMMAND_OPTIONS:
            continue
        if key not in all_fields:
            raise ConfigError(
                f"Unknown key '{key}' in config file {path}. Top-level keys must be settings of "
                f"some command; sections are named after commands: {', '.join(COMMAND_OPTIONS)}."
            )
        if key in cls.model_fields:
            values[key] = value
    section = data.get(cls.command) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"Section [{cls.command}] in {path} must be a mapping of settings.")
    for key in section:
        if key not in cls.model_fields:
            raise ConfigError(
                f"Unknown key '{key}' in section [{cls.command}] of {path}. "
                f"Allowed keys: {', '.join(sorted(cls.model_fields))}."
            )
    return values | section


def _format_validation_error(cls: type[Options], exc: ValidationError) -> str:
    lines = [f"Invalid settings for `wastecls {cls.command}`:"]
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        if field:
            cli = field.upper() if field in cls.arguments else flag_name(field)
            where = f"{field} ({cli}, {ENV_PREFIX}{field.upper()} or config key)"
            given = "" if err["type"] == "missing" else f"; got {err.get('input')!r}"
            lines.append(f"  - {where}: {message}{given}")
        else:
            lines.append(f"  - {message}")
    return "\n".join(lines)


def load_settings(
    cls: type[OptionsT], flags: dict[str, Any], config: Path | None = None
) -> OptionsT:
    """A command's options from the flags the user typed, the environment and a config file.

    Flags whose value is None were not given and fall through to the lower sources. Returns the
    plain options (which fields were set, by any source, is kept in `model_fields_set`).
    Raises ConfigError with a readable, field-by-field message.
    """
    if config is None and os.environ.get(f"{ENV_PREFIX}CONFIG"):
        config = Path(os.environ[f"{ENV_PREFIX}CONFIG"])
    file_values = _values_for(cls, _read_config_file(config), config) if config else {}
    token = _CONFIG_VALUES.set(file_values)
    try:
        settings = _SETTINGS[cls.command](**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(cls, exc)) from None
    finally:
        _CONFIG_VALUES.reset(token)
    return cls.model_construct(settings.model_fields_set, **dict(settings))
