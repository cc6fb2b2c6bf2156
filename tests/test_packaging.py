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


# The first release of each dependency with an API the code calls (read from the releases' sources).
API_FLOORS = {
    "diffusers": ("0.35", [  # apply_rotary_emb(sequence_dim=): 0.35.0; LoRA adapter metadata: 0.34.0
        ("diffusers.models.embeddings", "apply_rotary_emb", "sequence_dim"),
        ("diffusers", "FluxPipeline.save_lora_weights", "transformer_lora_adapter_metadata"),
    ]),
}


def _floor(spec: str, name: str) -> tuple[int, ...] | None:
    m = re.fullmatch(rf"{re.escape(name)}>=([0-9.]+)", spec.replace(" ", ""))
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def test_declared_floors_cover_the_apis_the_code_calls():
    """Each floor in pyproject.toml, environment.yml and workflow/envs/mosaic.yaml is at least the first release
    with the API the code calls, and the installed version has that API (its signature)."""
    import importlib
    import inspect

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    envs = [next(d["pip"] for d in yaml.safe_load((ROOT / f).read_text())["dependencies"] if isinstance(d, dict))
            for f in ("environment.yml", "workflow/envs/mosaic.yaml")]
    for name, (first, calls) in API_FLOORS.items():
        need = tuple(int(x) for x in first.split("."))
        for specs in [deps, *envs]:
            floors = [f for f in (_floor(s, name) for s in specs) if f]
            assert floors and floors[0] >= need, f"{name}: declared floor {floors} below {first}"
        for module, attr, param in calls:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            assert param in inspect.signature(obj).parameters, f"{module}.{attr} has no parameter {param!r}"
