"""Install metadata stays consistent: environment.yml mirrors pyproject, CLI and README commands exist."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    assert sorted(p for p in pip if p != "-e .") == sorted(deps)


def test_readme_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[test]" && snakemake --cores all results/ablation.csv' in readme
    assert 'pip install -e ".[test]" && pytest' in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'pip install -e "\.\[test\]" && pytest', ci)


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "mosaic.cli", "--help"], capture_output=True, text=True, check=True)
    assert "data" in out.stdout
    from mosaic.cli import COMMANDS
    for name in COMMANDS:
        sub = subprocess.run([sys.executable, "-m", "mosaic.cli", name, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0, sub.stderr
