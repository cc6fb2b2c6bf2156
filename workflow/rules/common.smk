# Shared definitions: paths, the experiment grids (Paramspace), evaluation sets and the MLflow store.
# Parsing this file has no side effects: it reads the config (and the store's generation id, if
# the store exists); everything that writes happens in jobs or in the Snakefile's `onstart`.
import itertools
import json
import uuid
from pathlib import Path

import pandas as pd
from snakemake.utils import Paramspace

from mosaic.infra.runfolder import DONE_FILE

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
R = config["results"]
STORE = f"{R}/mlflow"  # sqlite store + artifacts; created in onstart
STORE_DB = f"{STORE}/mlflow.db"  # = mosaic.infra.tracking.store.DB_NAME (not imported while parsing: it sets an env var)
STORE_GENERATION = f"{STORE}/generation"  # = mosaic.infra.tracking.store.GENERATION_FILE
LOGGED = f"{STORE}/logged"  # one marker (the run ids) per logging job
STUDIES = list(config["studies"])
SHARED_EXPERIMENT = "shared"  # the base model and the tiny-world evaluators, used by every study
DATA_KIND = "synthetic" if config["data"]["kind"] == "synthetic" else "collage"
# Shipped artefacts (config `artefacts`, a folder of this repository with provenance.json): the tiny base
# and evaluators, trained once by `snakemake --cores all ship --config retrain=True` (artefacts.smk) and
# verified on load; `retrain: true` trains them in this DAG instead.
SHIPPED = os.path.join(ROOT, config["artefacts"]) if config.get("artefacts") and not config.get("retrain") else None
HAS_BASE = config["training"]["base"] is not None  # a (tiny) base model pre-trained once, shipped or trained here
BASE = HAS_BASE and SHIPPED is None  # train it in this DAG
HAS_TINY_EVALUATORS = config["metrics"]["evaluators"] is not None
TINY_EVALUATORS = HAS_TINY_EVALUATORS and SHIPPED is None  # train them in this DAG
BASE_WEIGHTS = (f"{SHIPPED}/base" if SHIPPED else f"{R}/runs/base/transformer") if HAS_BASE else None
EVALUATORS = (f"{SHIPPED}/evaluators" if SHIPPED else f"{R}/evaluators") if HAS_TINY_EVALUATORS else None
if SHIPPED and not os.path.isfile(f"{SHIPPED}/provenance.json"):
    raise ValueError(f"config artefacts: {SHIPPED}/provenance.json not found; make the shipped base and evaluators "
                     "with `snakemake --cores all ship --config retrain=True`, or run with --config retrain=True")


def store_generation():
    """The id of the MLflow store: the one in its `generation` file, or a new one when the store is
    missing (new, or deleted by hand). Only read here: `onstart` writes a new id with the new store
    (`write_generation`), so the next parse reads it back.

    It is a param of every job that logs into the store or reads it, so deleting the store reruns
    exactly those jobs: Snakemake reruns a job for a changed param, never for a missing
    intermediate file (the markers); and a second run with nothing changed does nothing."""
    if os.path.isfile(STORE_DB) and os.path.isfile(STORE_GENERATION):
        with open(STORE_GENERATION) as f:
            return f.read().strip()
    return uuid.uuid4().hex


GENERATION = store_generation()


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _same(a, b):
    return {k: _num(v) for k, v in a.items()} == {k: _num(v) for k, v in b.items()}


# ---------------------------------------------------------------- methods and evaluation sets

def sweep_cell(methods, alpha, beta):
    """(name, method) of a sweep cell: a plain method of `methods` with exactly these loss weights, else a
    new method `sweep-a<alpha>-b<beta>`."""
    overrides = {"loss.alpha": float(alpha), "loss.beta": float(beta)}
    for name, m in methods.items():
        if not m.get("baseline") and _same(m.get("overrides", {}), overrides):
            return name, m
    return f"sweep-a{alpha:g}-b{beta:g}", {"overrides": overrides, "label": f"alpha={alpha:g} beta={beta:g}"}


def method_table(cfg):
    """name -> settings of every method: the configured ones, then the sweep study's new cells."""
    methods = {name: dict(m) for name, m in cfg["methods"].items()}
    sweep = cfg["studies"].get("sweep")
    cells = [sweep_cell(methods, a, b) for a, b in itertools.product(sweep["alpha"], sweep["beta"])] if sweep else []
    return {**methods, **dict(cells)}


METHODS = method_table(config)


def _evalsets():
    """name -> settings: heldout-k{n} (synthetic/collage test split with n subjects), <benchmark>-<scenario>."""
    out = {}
    ev = config["evalsets"]
    for n in ev["heldout"]["k"]:
        out[f"heldout-k{n}"] = {**ev["heldout"], "family": "heldout", "benchmark": "heldout", "scenario": "multi",
                                "n": n, "mechanism": True}
    for bench in ("dreambench", "xversebench"):
        if bench in ev:
            for sc in ev[bench]["scenarios"]:
                out[f"{bench}-{sc}"] = {**ev[bench], "family": bench, "benchmark": bench, "scenario": sc,
                                        "mechanism": False}
    return out


EVALSETS = _evalsets()


def _check_study(name, study):
    for e in study["evalsets"]:
        if e not in EVALSETS:
            raise ValueError(f"config studies.{name}.evalsets: unknown evaluation set {e!r}; known: "
                             f"{', '.join(EVALSETS)} (from config evalsets)")
    for m in study.get("methods", []):
        if m not in METHODS:
            raise ValueError(f"config studies.{name}.methods: unknown method {m!r}; known: {', '.join(METHODS)}")
        if METHODS[m].get("official") and any(EVALSETS[e]["family"] == "heldout" for e in study["evalsets"]):
            raise ValueError(f"config studies.{name}: official method {m!r} runs on benchmark evaluation sets only")
        if METHODS[m].get("bound") and (DATA_KIND != "synthetic" or
                                        any(EVALSETS[e]["family"] != "heldout" for e in study["evalsets"])):
            raise ValueError(f"config studies.{name}: bound {m!r} (the real targets, their backgrounds or the base "
                             "without references) exists only on the synthetic world's held-out evaluation sets")
        if METHODS[m].get("bound") == "base" and not HAS_BASE:
            raise ValueError(f"config studies.{name}: bound {m!r} samples the base model, and this profile has none "
                             "(training.base is null)")


def study_rows(name):
    """The study's grid: one row per training (method, ktrain, seed) with its study-specific tags."""
    study = config["studies"][name]
    _check_study(name, study)
    rows = []
    if name == "sweep":
        for a, b, k, s in itertools.product(study["alpha"], study["beta"], study["ktrain"], study["seeds"]):
            rows.append({"method": sweep_cell(METHODS, a, b)[0], "ktrain": k, "seed": s, "alpha": a, "beta": b})
    else:
        trained = [m for m in study["methods"] if not untrained(m)]
        for m, k, s in itertools.product(trained, study["ktrain"], study["seeds"]):
            rows.append({"method": m, "ktrain": k, "seed": s})
    return rows


def untrained(method):
    """An official release (sampled with its own weights) or a bound (mosaic.inference.bounds: no model at all)."""
    return bool(METHODS[method].get("official") or METHODS[method].get("bound"))


def untrained_source(method):
    return f"{'official' if METHODS[method].get('official') else 'bounds'}/method~{method}"


def study_official(name):
    return [m for m in config["studies"][name].get("methods", []) if METHODS[m].get("official")]


def study_untrained(name):
    return [m for m in config["studies"][name].get("methods", []) if untrained(m)]


GRIDS = {name: study_rows(name) for name in STUDIES}
# Every training once, whichever studies share it: the Paramspace of (method, ktrain, seed).
TRAIN = Paramspace(pd.DataFrame([{k: r[k] for k in ("method", "ktrain", "seed")} for g in GRIDS.values() for r in g],
                                 columns=["method", "ktrain", "seed"]).drop_duplicates().reset_index(drop=True))
TRAIN_PATTERN = TRAIN.wildcard_pattern  # method~{method}/ktrain~{ktrain}/seed~{seed}


wildcard_constraints:
    method=r"[A-Za-z0-9_.+-]+",
    ktrain=r"\d+",
    seed=r"\d+",
    evalset=r"[a-z0-9-]+",
    study="|".join(STUDIES) or "none",
    source=r"((official|bounds)/method~[^/]+|method~[^/]+/ktrain~\d+/seed~\d+)",


# ---------------------------------------------------------------- paths

def dataset(split):
    return f"{R}/data/{DATA_KIND}/{split}"


DONE = DONE_FILE  # a training's Snakemake output: the marker its run folder is finished (train.smk)


def run_dir(marker):
    """The run folder of a training's marker."""
    return os.path.dirname(str(marker))


VALIDATED = ".validated.txt"


def validated(split):
    return f"{R}/data/{DATA_KIND}/{split}{VALIDATED}"


def data_dirs(input):
    """The dataset folders behind a job's validation markers (a training digests them: train.smk)."""
    return [str(f).removesuffix(VALIDATED) for f in input if str(f).endswith(VALIDATED)]


def source_of(row):
    if untrained(row["method"]):
        return untrained_source(row["method"])
    return f"method~{row['method']}/ktrain~{row['ktrain']}/seed~{row['seed']}"


def samples_dir(source, evalset):
    return f"{R}/samples/{source}/evalset~{evalset}"


def eval_dir(source, evalset):
    return f"{R}/evals/{source}/evalset~{evalset}"


def marker(study, source):
    return f"{LOGGED}/{study}/{source}.json"


def study_markers(study):
    rows = GRIDS[study]
    sources = dict.fromkeys([source_of(r) for r in rows] + [untrained_source(m) for m in study_untrained(study)])
    return [marker(study, s) for s in sources] + shared_markers()


def shared_markers():
    return [f"{LOGGED}/shared/{n}.json" for n in (["base"] if BASE else []) + (["evaluators"] if TINY_EVALUATORS else [])]


def metrics_config_file():
    return f"{R}/metrics/metrics_config.json"


def log_file(*parts):
    return f"{os.path.join(R, 'logs', *map(str, parts))}.log"


def bench_file(*parts):
    """Snakemake `benchmark:` record (wall and CPU seconds, memory) of a job."""
    return f"{os.path.join(R, 'benchmarks', *map(str, parts))}.tsv"


# ---------------------------------------------------------------- trainer overrides

def _yaml_value(v):
    return json.dumps(v)  # JSON is YAML: `mosaic train --set key=value` parses it back exactly


def train_overrides(method, ktrain, seed):
    """`--set` items of one training: common, lora, the method's own, then this instance's data and seed."""
    t = config["training"]
    ov = {**t["common"], **t["lora"], **METHODS[method].get("overrides", {})}
    ov.update({"variant": method, "profile": config["profile"], "train.seed": int(seed),
               "data.train": dataset(f"train_k{ktrain}"), "data.val": dataset("val"),
               "data.target_size": config["data"]["target_size"], "data.ref_size": config["data"]["ref_size"]})
    if HAS_BASE:
        ov["model.weights"] = BASE_WEIGHTS
    return [f"{k}={_yaml_value(v)}" for k, v in ov.items()]


def base_split():
    """The base model's text-to-image data: data.base (base_k{K}) if configured, else the largest train split."""
    d = config["data"]
    return f"base_k{d['base']['k_max']}" if d.get("base") else f"train_k{d['train']['k_max']}"


def base_inputs():
    """What a LoRA training reads of the base: the DAG's base run, or the shipped artefact's provenance."""
    if BASE:
        return [f"{R}/runs/base/{DONE}"]
    return [f"{SHIPPED}/provenance.json"] if HAS_BASE else []


def base_overrides():
    t = config["training"]
    ov = {**t["common"], **t["base"], "variant": "base", "profile": config["profile"], "train.mode": "base",
          "data.train": dataset(base_split()),
          "data.target_size": config["data"]["target_size"], "data.ref_size": config["data"]["ref_size"]}
    return [f"{k}={_yaml_value(v)}" for k, v in ov.items()]


def launcher(resources):
    """The launch prefix for the job's GPUs and nodes (workflow/lib/launch.py), or plain Python for one process."""
    from workflow.lib.launch import launch_prefix

    return launch_prefix(config["training"], getattr(resources, "gpu", 0), getattr(resources, "nodes", 1))


# ---------------------------------------------------------------- the MLflow store

def create_store():
    """The sqlite store and one experiment per study, created once before any job (jobs only add runs)."""
    from mosaic.infra.tracking.store import ensure_store

    ensure_store(STORE, [SHARED_EXPERIMENT, *STUDIES])


def write_generation():
    """Record GENERATION, the id this parse planned the jobs with, as the store's (a no-op for a store
    that existed: its id was read); the next parse reads it back."""
    from mosaic.infra.runfolder import atomic_write

    path = Path(STORE_GENERATION)
    found = path.read_text().strip() if path.is_file() else None
    if found != GENERATION:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, GENERATION)


GALLERY = f"{R}/gallery/index.html"  # the comparison gallery of every study's images (gallery.smk)


def all_targets():
    return ([f"{R}/figures/data_preview.png"] + [p for s in STUDIES for p in TABLE_OUTPUTS[s].values()]
            + ([GALLERY] if STUDIES else []))


# ---------------------------------------------------------------- per-rule helpers

def split_settings(split):
    """(n, k_min, k_max) of a data split name: train_k{K}, base_k{K} (the base model's), val, test_k{n}."""
    d = config["data"]
    if split == "val":
        return d["val"]["n"], d["val"]["k_min"], d["val"]["k_max"]
    kind, k = split.split("_k")
    if kind in ("train", "base"):
        return d[kind]["n"], d[kind]["k_min"], int(k)
    return d["test"]["n"], int(k), int(k)


def identity_split(split):
    kind = split.split("_k")[0]
    return "train" if kind == "base" else kind  # train / val / test: the identity split of the world


def official_args(name):
    return " ".join(f"--baseline-arg {k}={json.dumps(v)}" for k, v in METHODS[name].get("args", {}).items())


def sample_source(evalset):
    """The prompt source (sampling arguments) of an evaluation set."""
    e = EVALSETS[evalset]
    if e["family"] == "heldout":
        path = dataset(f"test_k{e['n']}")
        return f"--dataset {path}"
    limit = f" --limit {e['limit']}" if e.get("limit") else ""
    return (f"--benchmark {e['benchmark']} --scenario {e['scenario']} --benchmarks-root {config['benchmarks']}"
            + limit)


def sample_inputs(wc):
    e = EVALSETS[wc.evalset]
    return [dataset(f"test_k{e['n']}"), validated(f"test_k{e['n']}")] if e["family"] == "heldout" else []


# metrics scored by their own rule in their own conda environment (workflow/envs/), merged into the evaluation
OWN_ENV_METRICS = {"HPSv3": "hpsv3"}  # HPSv3: the hpsv3 package pins an older transformers


def own_env_table(metric, source, evalset):
    return f"{R}/evals_env/{metric}/{source}/evalset~{evalset}.csv"


def own_env_tables(wc):
    """The evaluation's rows scored in their own environments, merged by the evaluate job."""
    return [own_env_table(m, wc.source, wc.evalset) for m in EVALSETS[wc.evalset]["metrics"] if m in OWN_ENV_METRICS]


def evaluate_inputs(wc):
    return {"samples": samples_dir(wc.source, wc.evalset), "metrics": metrics_config_file(),
            "extra": own_env_tables(wc)}


def evaluate_args(wc):
    e = EVALSETS[wc.evalset]
    main = [m for m in e["metrics"] if m not in OWN_ENV_METRICS]
    extra = own_env_tables(wc)
    args = [f"--evalset {wc.evalset}", f"--benchmark {e['benchmark']}", f"--scenario {e['scenario']}",
            "--metric-names " + ",".join(main)] + [f"--extra-table {t}" for t in extra]
    if e["family"] == "heldout":
        args.append(f"--n {e['n']}")
    else:
        args.append(f"--benchmarks-root {config['benchmarks']}")
    return " ".join(args)


def log_tags(study, source):
    """The grid columns of this training in this study (e.g. alpha/beta in the sweep), as run tags."""
    rows = [r for r in GRIDS[study] if source_of(r) == source]
    method = source.split("method~")[1].split("/")[0]
    tags = {"method": method, **{k: str(v) for k, v in (rows[0] if rows else {}).items()}}
    tags.update({"study": study, "label": METHODS[method].get("label", "")})
    return json.dumps(tags)


def log_inputs(wc):
    study = config["studies"][wc.study]
    out = {"evals": [eval_dir(wc.source, e) for e in study["evalsets"]]}
    if not wc.source.startswith(("official/", "bounds/")):
        out["run"] = f"{R}/runs/{wc.source}/{DONE}"
    return out


def table_params(study):
    """What the table builder needs besides the runs: method order and labels, paper names and values."""
    listed = config["studies"][study].get("methods", [])  # the study's order (bounds first and last)
    methods = dict.fromkeys(listed) | dict.fromkeys(r["method"] for r in GRIDS[study])
    return json.dumps({"methods": {m: {k: METHODS[m].get(k, "") for k in ("label", "paper")} for m in methods},
                       "paper_values": config.get("paper_values"), "profile": config["profile"]})


def table_forms(key, csv):
    """A table's files: its readable CSV and, under <results>/tables/, the tidy long CSV it is computed from
    (<name>_tidy.csv), Markdown (<name>.md) and LaTeX (<name>.tex); keys <key>, <key>_tidy, <key>_md, <key>_tex."""
    name = os.path.basename(csv)[: -len(".csv")]
    return {key: csv, f"{key}_tidy": f"{R}/tables/{name}_tidy.csv", f"{key}_md": f"{R}/tables/{name}.md",
            f"{key}_tex": f"{R}/tables/{name}.tex"}


TABLE_OUTPUTS = {
    "ablation": {**table_forms("ablation", f"{R}/ablation.csv"), "attention": f"{R}/figures/attention"},
    "sweep": {**table_forms("sweep", f"{R}/sweep_alpha_beta.csv"), "heatmap": f"{R}/figures/sweep_alpha_beta.png"},
    "scaling": {**table_forms("scaling", f"{R}/scaling.csv"), "figure": f"{R}/figures/scaling.png"},
    "benchmark": {**table_forms("main", f"{R}/tables/main.csv"),
                  **table_forms("xversebench", f"{R}/tables/xversebench.csv")},
}
TABLE_FORMS = {"_tidy": "Tidy tables", "_md": "Markdown tables", "_tex": "LaTeX tables"}  # report subcategories


def table_report(study, key, path):
    form = next((f for f in TABLE_FORMS if key.endswith(f)), None)
    if form:  # one caption per form (workflow/report/table<form>.rst), whichever table it is
        return report(path, caption=f"../report/table{form}.rst", category=study.capitalize(),
                      subcategory=TABLE_FORMS[form])
    caption = f"../report/{study}_{key}.rst"
    if key == "attention":
        return report(directory(path), patterns=["{name}.png"], caption=caption, category="Ablation",
                      subcategory="Attention maps")
    return report(path, caption=caption, category=study.capitalize())
