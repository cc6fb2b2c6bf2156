"""Every workflow adapter runs from the project root as its docstring shows: `--help` prints its usage (issue 24).

A script that only Snakemake's environment can import (e.g. `workflow.lib` missing from the installed
packages) fails here, as it would for a user who reruns one job by hand.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = sorted((ROOT / "workflow" / "scripts").glob("*.py"))


def test_there_are_adapters():
    assert len(ADAPTERS) >= 8, [p.name for p in ADAPTERS]


@pytest.mark.parametrize("script", ADAPTERS, ids=lambda p: p.name)
def test_adapter_help_runs_from_the_project_root(script, tmp_path):
    rel = script.relative_to(ROOT)
    assert f"python {rel}" in script.read_text(), f"{rel}: its docstring does not show how to run it"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLFLOW_DISABLE_TELEMETRY": "true"}  # no PYTHONPATH
    out = subprocess.run([sys.executable, str(rel), "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"{rel} --help failed:\n{out.stderr[-2000:]}"
    assert out.stdout.startswith(f"usage: {script.name}"), out.stdout[:300]
