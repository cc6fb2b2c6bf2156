# Shared definitions, the Snakemake glue of the plan: the plan itself (methods, evaluation sets, the
# experiment grids, paths, each job's overrides and arguments) is workflow/lib/plan.py, plain Python
# tested without Snakemake (tests/test_workflow_plan.py); here it is built once from the config and handed
# to the rules: the shell prefix, the grids' Paramspace, wildcard constraints, input functions, reports.
# Parsing this file has no side effects: it reads the config (and the store's generation id, if
# the store exists); everything that writes happens in jobs or in the Snakefile's `onstart`.
import json  # used by the rule files (params)
from pathlib import Path  # used by the rule files (aggregate.smk)

import pandas as pd
from snakemake.utils import Paramspace

from workflow.lib import plan as _plan

ROOT = workflow.basedir  # the project root (this repository)
SCRIPTS = os.path.join(ROOT, "workflow", "scripts")  # the jobs' adapters (python workflow/scripts/<name>.py)
LIB = os.path.join(ROOT, "workflow", "lib")  # what they import besides the project packages (workflow.lib)


def _shell_prefix():
    """The prefix of every job's shell command. PYTHONPATH: the project packages from this checkout
    (conda environments do not install the project). PATH: `python` is the interpreter running
    Snakemake (its environment has the project installed), even when that environment is not
    activated; under --software-deployment-method conda, the python of the job's conda environment,
    kept first: Snakemake activates that environment before the prefix runs, which shows as a
    CONDA_PREFIX other than Snakemake's own."""
    py_bin = os.path.dirname(sys.executable)
    own_conda = os.environ.get("CONDA_PREFIX", "")
    sh = (f'export PYTHONPATH="{ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"; '
          f'if [ "${{CONDA_PREFIX:-}}" != "{own_conda}" ]; then export PATH="$CONDA_PREFIX/bin:{py_bin}:$PATH"; '
          f'else export PATH="{py_bin}:$PATH"; fi; ')
    return sh.replace("{", "{{").replace("}", "}}")  # shell.prefix formats its string like a shell command


shell.prefix(_shell_prefix())
ENV = "../envs/mosaic.yaml"  # the conda environment of every rule (relative to workflow/rules/)

# The plan of this config (a ValueError naming the field for a study it cannot run; shipped artefacts checked).
PLAN = _plan.Plan(config, ROOT)
GENERATION = PLAN.stored_generation()  # the MLflow store's id: a param of every job that logs into it or reads it

# The plan's names the rule files use.
R = PLAN.results
LOGGED = PLAN.logged
STUDIES = PLAN.studies
SHARED_EXPERIMENT = _plan.SHARED_EXPERIMENT
BASE, HAS_BASE = PLAN.base, PLAN.has_base  # train the base in this DAG; a base at all (shipped or trained)
TINY_EVALUATORS, HAS_TINY_EVALUATORS = PLAN.tiny_evaluators, PLAN.has_tiny_evaluators
EVALUATORS = PLAN.evaluators
METHODS, EVALSETS = PLAN.methods, PLAN.evalsets
DONE = _plan.DONE
GALLERY = PLAN.gallery
TABLE_OUTPUTS = PLAN.table_outputs
run_dir, data_dirs, identity_split = _plan.run_dir, _plan.data_dirs, _plan.identity_split
dataset, validated, samples_dir, own_env_table = PLAN.dataset, PLAN.validated, PLAN.samples_dir, PLAN.own_env_table
log_file, bench_file, metrics_config_file = PLAN.log_file, PLAN.bench_file, PLAN.metrics_config_file
study_markers, study_official, study_untrained = PLAN.study_markers, PLAN.study_official, PLAN.study_untrained
train_overrides, base_overrides, base_split, base_inputs = (PLAN.train_overrides, PLAN.base_overrides,
                                                            PLAN.base_split, PLAN.base_inputs)
split_settings, official_args, sample_source = PLAN.split_settings, PLAN.official_args, PLAN.sample_source
log_tags, table_params, all_targets = PLAN.log_tags, PLAN.table_params, PLAN.all_targets

# Every training once, whichever studies share it: the Paramspace of (method, ktrain, seed).
TRAIN = Paramspace(pd.DataFrame(PLAN.trainings(), columns=list(_plan.TRAIN_COLUMNS)))
TRAIN_PATTERN = TRAIN.wildcard_pattern  # method~{method}/ktrain~{ktrain}/seed~{seed}


wildcard_constraints:
    method=r"[A-Za-z0-9_.+-]+",
    ktrain=r"\d+",
    seed=r"\d+",
    evalset=r"[a-z0-9-]+",
    study="|".join(STUDIES) or "none",
    source=r"((official|bounds)/method~[^/]+|method~[^/]+/ktrain~\d+/seed~\d+)",


# ---------------------------------------------------------------- input functions (wildcards -> the plan)

def sample_inputs(wc):
    return PLAN.sample_inputs(wc.evalset)


def evaluate_inputs(wc):
    return PLAN.evaluate_inputs(wc.source, wc.evalset)


def evaluate_args(wc):
    return PLAN.evaluate_args(wc.source, wc.evalset)


def log_inputs(wc):
    return PLAN.log_inputs(wc.study, wc.source)


def launcher(resources):
    """The launch prefix for the job's GPUs and nodes (workflow/lib/launch.py), or plain Python for one process."""
    from workflow.lib.launch import launch_prefix

    return launch_prefix(config["training"], getattr(resources, "gpu", 0), getattr(resources, "nodes", 1))


# ---------------------------------------------------------------- the MLflow store (onstart)

def create_store():
    """The sqlite store and one experiment per study, created once before any job (jobs only add runs)."""
    _plan.create_store(PLAN.store, STUDIES)


def write_generation():
    """Record GENERATION, the id this parse planned the jobs with, as the store's (a no-op for a store
    that existed: its id was read); the next parse reads it back."""
    _plan.write_generation(PLAN.store_generation, GENERATION)


# ---------------------------------------------------------------- report entries of the tables

def table_report(study, key, path):
    form = next((f for f in _plan.TABLE_FORMS if key.endswith(f)), None)
    if form:  # one caption per form (workflow/report/table<form>.rst), whichever table it is
        return report(path, caption=f"../report/table{form}.rst", category=study.capitalize(),
                      subcategory=_plan.TABLE_FORMS[form])
    caption = f"../report/{study}_{key}.rst"
    if key == "attention":
        return report(directory(path), patterns=["{name}.png"], caption=caption, category="Ablation",
                      subcategory="Attention maps")
    return report(path, caption=caption, category=study.capitalize())
