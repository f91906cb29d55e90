"""Settings precedence (flag > WASTECLS_* > config file > default) and readable errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from waste_cli.cli.sources import load_settings
from waste_cli.core.errors import ConfigError
from waste_cli.options import PrepareOptions, TrainOptions

BASE = {"source": "raw", "out": "data"}


def test_precedence_flag_env_file_default(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text("seed = 7\n[prepare]\nsize = 128\nmin_size = 40\nval_frac = 0.3\n")
    monkeypatch.setenv("WASTECLS_MIN_SIZE", "50")
    monkeypatch.setenv("WASTECLS_VAL_FRAC", "0.2")
    s = load_settings(PrepareOptions, {**BASE, "val_frac": 0.15}, config)
    assert s.val_frac == 0.15  # flag beats env and file
    assert s.min_size == 50  # env beats file
    assert s.size == 128 and s.seed == 7  # file (section and top level) beats default
    assert s.test_frac == 0.2  # default


def test_yaml_config_and_env_config_path(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("prepare:\n  size: 64\n  square: true\n")
    monkeypatch.setenv("WASTECLS_CONFIG", str(config))
    s = load_settings(PrepareOptions, BASE)
    assert s.size == 64 and s.square is True


def test_written_config_repeats_the_run(sample_dir, tmp_path):
    out = tmp_path / "a"
    assert run_cli("prepare", sample_dir, "--out", out, "--size", "48", "--seed", "3",
                   "-q").exit_code == 0
    again = load_settings(PrepareOptions, {"out": tmp_path / "b"}, out / "config.yaml")
    assert (again.size, again.seed, again.source) == (48, 3, [sample_dir])


@pytest.mark.parametrize(
    ("text", "suffix", "message"),
    [
        ("[prepare]\nsizee = 3\n", ".toml", "Unknown key 'sizee'"),
        ("bogus = 1\n", ".toml", "Unknown key 'bogus'"),
        ("[prepare]\nsize = -3\n", ".toml", "size (--size"),
        ("[prepare\n", ".toml", "Cannot read config file"),
        ("a: [\n", ".yaml", "Cannot read config file"),
        ("size: 3\n", ".ini", "must end in"),
        ("a = " + "[" * 50_000 + "]" * 50_000, ".toml", "nested too deeply"),
        ("[" * 50_000 + "]" * 50_000, ".yaml", "nested too deeply"),
    ],
)
def test_config_file_errors_name_the_problem(tmp_path, text, suffix, message):
    config = tmp_path / f"c{suffix}"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(PrepareOptions, BASE, config)


def test_missing_config_file_and_bad_env_value_via_cli(tmp_path):
    result = run_cli("prepare", "raw", "--out", "o", "--config", tmp_path / "none.toml")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = run_cli("prepare", "raw", "--out", "o", env={"WASTECLS_SEED": "abc"})
    assert result.exit_code == 2
    assert "seed (--seed, WASTECLS_SEED" in result.output and "Traceback" not in result.output


def test_version_and_help_with_examples():
    from waste_cli import __version__

    assert __version__ in run_cli("--version").output
    for command in ("prepare", "train", "evaluate", "predict", "export", "pseudolabel"):
        result = run_cli(command, "--help")
        assert result.exit_code == 0 and "Examples" in result.output, command


@pytest.mark.subprocess
def test_flag_reference_is_generated_from_the_app(tmp_path):
    """docs/cli.md is what `make docs` generates from the Typer app now."""
    fresh = tmp_path / "cli.md"
    subprocess.run([sys.executable, "-m", "typer", "waste_cli.cli.app", "utils", "docs", "--name",
                    "wastecls", "--output", str(fresh)], check=True, capture_output=True)
    committed = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert committed.read_text() == fresh.read_text(), "docs/cli.md is stale: run `make docs`"


def test_resume_takes_the_run_folder_or_its_last_pt(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"")
    for given in (tmp_path, tmp_path / "last.pt"):
        assert load_settings(TrainOptions, {"resume": given}, None).resume == tmp_path
