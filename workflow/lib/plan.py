"""The workflow's plan: which methods, evaluation sets and grids a config asks for, where every job's files
live and the overrides and arguments each job gets.

It exists so the plan is plain Python, importable and unit-tested without Snakemake running
(tests/test_workflow_plan.py); workflow/rules/common.smk builds one `Plan` from the config and keeps only
the Snakemake glue (the shell prefix, the Paramspace, wildcard constraints, input functions, reports).
Building a plan has no side effects: it reads the config (and checks the shipped artefacts exist);
reading the store's generation id and everything that writes are separate calls (the Snakefile's
`onstart`).
"""
from __future__ import annotations

import itertools
import json
import os
import uuid
from pathlib import Path

from mosaic.infra.runfolder import DONE_FILE

SHARED_EXPERIMENT = "shared"  # the base model and the tiny-world evaluators, used by every study
DONE = DONE_FILE  # a training's Snakemake output: the marker its run folder is finished (train.smk)
VALIDATED = ".validated.txt"
TRAIN_COLUMNS = ("method", "ktrain", "seed")  # a training: one instance of the Paramspace (common.smk)
# metrics scored by their own rule in their own conda environment (workflow/envs/), merged into the evaluation
OWN_ENV_METRICS = {"HPSv3": "hpsv3"}  # HPSv3: the hpsv3 package pins an older transformers
TABLE_FORMS = {"_tidy": "Tidy tables", "_md": "Markdown tables", "_tex": "LaTeX tables"}  # report subcategories


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _same(a, b):
    return {k: _num(v) for k, v in a.items()} == {k: _num(v) for k, v in b.items()}


def _yaml_value(v):
    return json.dumps(v)  # JSON is YAML: `mosaic train --set key=value` parses it back exactly


# ---------------------------------------------------------------- methods and evaluation sets

def sweep_cell(methods: dict, alpha, beta) -> tuple[str, dict]:
    """(name, method) of a sweep cell: a plain method of `methods` with exactly these loss weights, else a
    new method `sweep-a<alpha>-b<beta>`."""
    overrides = {"loss.alpha": float(alpha), "loss.beta": float(beta)}
    for name, m in methods.items():
        if not m.get("baseline") and _same(m.get("overrides", {}), overrides):
            return name, m
    return f"sweep-a{alpha:g}-b{beta:g}", {"overrides": overrides, "label": f"alpha={alpha:g} beta={beta:g}"}


def method_table(cfg: dict) -> dict:
    """name -> settings of every method: the configured ones, then the sweep study's new cells."""
    methods = {name: dict(m) for name, m in cfg["methods"].items()}
    sweep = cfg["studies"].get("sweep")
    cells = [sweep_cell(methods, a, b) for a, b in itertools.product(sweep["alpha"], sweep["beta"])] if sweep else []
    return {**methods, **dict(cells)}


def evalset_table(cfg: dict) -> dict:
    """name -> settings: heldout-k{n} (synthetic/collage test split with n subjects), <benchmark>-<scenario>."""
    out = {}
    ev = cfg["evalsets"]
    for n in ev["heldout"]["k"]:
        out[f"heldout-k{n}"] = {**ev["heldout"], "family": "heldout", "benchmark": "heldout", "scenario": "multi",
                                "n": n, "mechanism": True}
    for bench in ("dreambench", "xversebench"):
        if bench in ev:
            for sc in ev[bench]["scenarios"]:
                out[f"{bench}-{sc}"] = {**ev[bench], "family": bench, "benchmark": bench, "scenario": sc,
                                        "mechanism": False}
    return out


# ---------------------------------------------------------------- paths and data splits (no plan needed)

def run_dir(marker) -> str:
    """The run folder of a training's marker."""
    return os.path.dirname(str(marker))


def data_dirs(inputs) -> list[str]:
    """The dataset folders behind a job's validation markers (a training digests them: train.smk)."""
    return [str(f).removesuffix(VALIDATED) for f in inputs if str(f).endswith(VALIDATED)]


def identity_split(split: str) -> str:
    kind = split.split("_k")[0]
    return "train" if kind == "base" else kind  # train / val / test: the identity split of the world


# ---------------------------------------------------------------- the MLflow store's id and its first writes

def store_generation(db: str, generation_file: str) -> str:
    """The id of the MLflow store: the one in its `generation` file, or a new one when the store is
    missing (new, or deleted by hand). Only read here: `onstart` writes a new id with the new store
    (`write_generation`), so the next parse reads it back.

    It is a param of every job that logs into the store or reads it, so deleting the store reruns
    exactly those jobs: Snakemake reruns a job for a changed param, never for a missing
    intermediate file (the markers); and a second run with nothing changed does nothing."""
    if os.path.isfile(db) and os.path.isfile(generation_file):
        with open(generation_file) as f:
            return f.read().strip()
    return uuid.uuid4().hex


def create_store(store: str, studies) -> None:
    """The sqlite store and one experiment per study, created once before any job (jobs only add runs)."""
    from mosaic.infra.tracking.store import ensure_store  # not imported while parsing: it sets an env var

    ensure_store(store, [SHARED_EXPERIMENT, *studies])


def write_generation(generation_file: str, generation: str) -> None:
    """Record `generation`, the id a parse planned the jobs with, as the store's (a no-op for a store
    that existed: its id was read); the next parse reads it back."""
    from mosaic.infra.runfolder import atomic_write

    path = Path(generation_file)
    found = path.read_text().strip() if path.is_file() else None
    if found != generation:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, generation)


class Plan:
    """Everything the rules need from one config (a validated profile) and the project root: the methods,
    evaluation sets and study grids, the paths of every job's files, and each job's overrides and arguments.
    Building it checks the studies against the methods and evaluation sets (ValueError naming the field)."""

    def __init__(self, config: dict, root):
        self.config = config
        self.root = str(root)  # the project root (this repository)
        self._paths(config)
        self._artefacts(config)
        self.methods = method_table(config)
        self.evalsets = evalset_table(config)
        self.grids = {name: self.study_rows(name) for name in self.studies}
        # the comparison gallery of every study's images (gallery.smk)
        self.gallery = f"{self.results}/gallery/index.html"
        self.table_outputs = self._table_outputs()

    def _paths(self, config: dict) -> None:
        r = self.results = config["results"]
        self.store = f"{r}/mlflow"  # sqlite store + artifacts; created in onstart
        # = mosaic.infra.tracking.store.DB_NAME (not imported while parsing: it sets an env var)
        self.store_db = f"{self.store}/mlflow.db"
        self.store_generation = f"{self.store}/generation"  # = mosaic.infra.tracking.store.GENERATION_FILE
        self.logged = f"{self.store}/logged"  # one marker (the run ids) per logging job
        self.studies = list(config["studies"])
        self.data_kind = "synthetic" if config["data"]["kind"] == "synthetic" else "collage"

    def _artefacts(self, config: dict) -> None:
        """Shipped artefacts (config `artefacts`, a folder of this repository with provenance.json): the tiny base
        and evaluators, trained once by `snakemake --cores all ship --config retrain=True` (artefacts.smk) and
        verified on load; `retrain: true` trains them in this DAG instead."""
        r = self.results
        self.shipped = (os.path.join(self.root, config["artefacts"])
                        if config.get("artefacts") and not config.get("retrain") else None)
        # a (tiny) base model pre-trained once, shipped or trained here
        self.has_base = config["training"]["base"] is not None
        self.base = self.has_base and self.shipped is None  # train it in this DAG
        self.has_tiny_evaluators = config["metrics"]["evaluators"] is not None
        self.tiny_evaluators = self.has_tiny_evaluators and self.shipped is None  # train them in this DAG
        self.base_weights = ((f"{self.shipped}/base" if self.shipped else f"{r}/runs/base/transformer")
                             if self.has_base else None)
        self.evaluators = ((f"{self.shipped}/evaluators" if self.shipped else f"{r}/evaluators")
                           if self.has_tiny_evaluators else None)
        if self.shipped and not os.path.isfile(f"{self.shipped}/provenance.json"):
            raise ValueError(f"config artefacts: {self.shipped}/provenance.json not found; make the shipped base and "
                             "evaluators with `snakemake --cores all ship --config retrain=True`, or run with "
                             "--config retrain=True")

    def stored_generation(self) -> str:
        """The store's generation id (`store_generation`): a param of every job that logs into it or reads it."""
        return store_generation(self.store_db, self.store_generation)

    # ------------------------------------------------------------ studies

    def check_study(self, name: str, study: dict) -> None:
        """A ValueError naming the field when a study asks for an unknown evaluation set or method, or for a
        method on evaluation sets it cannot run on."""
        evalsets, methods = self.evalsets, self.methods
        for e in study["evalsets"]:
            if e not in evalsets:
                raise ValueError(f"config studies.{name}.evalsets: unknown evaluation set {e!r}; known: "
                                 f"{', '.join(evalsets)} (from config evalsets)")
        for m in study.get("methods", []):
            if m not in methods:
                raise ValueError(f"config studies.{name}.methods: unknown method {m!r}; known: {', '.join(methods)}")
            if methods[m].get("official") and any(evalsets[e]["family"] == "heldout" for e in study["evalsets"]):
                raise ValueError(f"config studies.{name}: official method {m!r} runs on benchmark evaluation sets only")
            if methods[m].get("bound") and (self.data_kind != "synthetic" or
                                            any(evalsets[e]["family"] != "heldout" for e in study["evalsets"])):
                raise ValueError(f"config studies.{name}: bound {m!r} (the real targets, their backgrounds or the "
                                 "base without references) exists only on the synthetic world's held-out "
                                 "evaluation sets")
            if methods[m].get("bound") == "base" and not self.has_base:
                raise ValueError(f"config studies.{name}: bound {m!r} samples the base model, and this profile has "
                                 "none (training.base is null)")

    def study_rows(self, name: str) -> list[dict]:
        """The study's grid: one row per training (method, ktrain, seed) with its study-specific tags."""
        study = self.config["studies"][name]
        self.check_study(name, study)
        rows = []
        if name == "sweep":
            for a, b, k, s in itertools.product(study["alpha"], study["beta"], study["ktrain"], study["seeds"]):
                method = sweep_cell(self.methods, a, b)[0]
                rows.append({"method": method, "ktrain": k, "seed": s, "alpha": a, "beta": b})
        else:
            trained = [m for m in study["methods"] if not self.untrained(m)]
            for m, k, s in itertools.product(trained, study["ktrain"], study["seeds"]):
                rows.append({"method": m, "ktrain": k, "seed": s})
        return rows

    def trainings(self) -> list[dict]:
        """Every training once, whichever studies share it: the rows (method, ktrain, seed) of the Paramspace."""
        rows = [tuple(r[k] for k in TRAIN_COLUMNS) for g in self.grids.values() for r in g]
        return [dict(zip(TRAIN_COLUMNS, r)) for r in dict.fromkeys(rows)]

    def untrained(self, method: str) -> bool:
        """An official release (sampled with its own weights) or a bound (mosaic.inference.bounds: no model at all)."""
        return bool(self.methods[method].get("official") or self.methods[method].get("bound"))

    def untrained_source(self, method: str) -> str:
        return f"{'official' if self.methods[method].get('official') else 'bounds'}/method~{method}"

    def study_official(self, name: str) -> list[str]:
        return [m for m in self.config["studies"][name].get("methods", []) if self.methods[m].get("official")]

    def study_untrained(self, name: str) -> list[str]:
        return [m for m in self.config["studies"][name].get("methods", []) if self.untrained(m)]

    # ------------------------------------------------------------ paths

    def dataset(self, split: str) -> str:
        return f"{self.results}/data/{self.data_kind}/{split}"

    def validated(self, split: str) -> str:
        return f"{self.results}/data/{self.data_kind}/{split}{VALIDATED}"

    def source_of(self, row: dict) -> str:
        if self.untrained(row["method"]):
            return self.untrained_source(row["method"])
        return f"method~{row['method']}/ktrain~{row['ktrain']}/seed~{row['seed']}"

    def samples_dir(self, source: str, evalset: str) -> str:
        return f"{self.results}/samples/{source}/evalset~{evalset}"

    def eval_dir(self, source: str, evalset: str) -> str:
        return f"{self.results}/evals/{source}/evalset~{evalset}"

    def marker(self, study: str, source: str) -> str:
        return f"{self.logged}/{study}/{source}.json"

    def study_markers(self, study: str) -> list[str]:
        rows = self.grids[study]
        sources = dict.fromkeys([self.source_of(r) for r in rows]
                                + [self.untrained_source(m) for m in self.study_untrained(study)])
        return [self.marker(study, s) for s in sources] + self.shared_markers()

    def shared_markers(self) -> list[str]:
        names = (["base"] if self.base else []) + (["evaluators"] if self.tiny_evaluators else [])
        return [f"{self.logged}/shared/{n}.json" for n in names]

    def metrics_config_file(self) -> str:
        return f"{self.results}/metrics/metrics_config.json"

    def log_file(self, *parts) -> str:
        return f"{os.path.join(self.results, 'logs', *map(str, parts))}.log"

    def bench_file(self, *parts) -> str:
        """Snakemake `benchmark:` record (wall and CPU seconds, memory) of a job."""
        return f"{os.path.join(self.results, 'benchmarks', *map(str, parts))}.tsv"

    def all_targets(self) -> list[str]:
        return ([f"{self.results}/figures/data_preview.png"]
                + [p for s in self.studies for p in self.table_outputs[s].values()]
                + ([self.gallery] if self.studies else []))

    # ------------------------------------------------------------ trainer overrides

    def train_overrides(self, method: str, ktrain, seed) -> list[str]:
        """`--set` items of one training: common, lora, the method's own, then this instance's data and seed."""
        cfg = self.config
        t = cfg["training"]
        ov = {**t["common"], **t["lora"], **self.methods[method].get("overrides", {})}
        ov.update({"variant": method, "profile": cfg["profile"], "train.seed": int(seed),
                   "data.train": self.dataset(f"train_k{ktrain}"), "data.val": self.dataset("val"),
                   "data.target_size": cfg["data"]["target_size"], "data.ref_size": cfg["data"]["ref_size"]})
        if self.has_base:
            ov["model.weights"] = self.base_weights
        return [f"{k}={_yaml_value(v)}" for k, v in ov.items()]

    def base_split(self) -> str:
        """The base model's text-to-image data: data.base (base_k{K}) if configured, else the largest train split."""
        d = self.config["data"]
        return f"base_k{d['base']['k_max']}" if d.get("base") else f"train_k{d['train']['k_max']}"

    def base_inputs(self) -> list[str]:
        """What a LoRA training reads of the base: the DAG's base run, or the shipped artefact's provenance."""
        if self.base:
            return [f"{self.results}/runs/base/{DONE}"]
        return [f"{self.shipped}/provenance.json"] if self.has_base else []

    def base_overrides(self) -> list[str]:
        cfg = self.config
        t = cfg["training"]
        ov = {**t["common"], **t["base"], "variant": "base", "profile": cfg["profile"], "train.mode": "base",
              "data.train": self.dataset(self.base_split()),
              "data.target_size": cfg["data"]["target_size"], "data.ref_size": cfg["data"]["ref_size"]}
        return [f"{k}={_yaml_value(v)}" for k, v in ov.items()]

    # ------------------------------------------------------------ per-rule arguments

    def split_settings(self, split: str) -> tuple[int, int, int]:
        """(n, k_min, k_max) of a data split name: train_k{K}, base_k{K} (the base model's), val, test_k{n}."""
        d = self.config["data"]
        if split == "val":
            return d["val"]["n"], d["val"]["k_min"], d["val"]["k_max"]
        kind, k = split.split("_k")
        if kind in ("train", "base"):
            return d[kind]["n"], d[kind]["k_min"], int(k)
        return d["test"]["n"], int(k), int(k)

    def official_args(self, name: str) -> str:
        return " ".join(f"--baseline-arg {k}={json.dumps(v)}" for k, v in self.methods[name].get("args", {}).items())

    def sample_source(self, evalset: str) -> str:
        """The prompt source (sampling arguments) of an evaluation set."""
        e = self.evalsets[evalset]
        if e["family"] == "heldout":
            path = self.dataset(f"test_k{e['n']}")
            return f"--dataset {path}"
        limit = f" --limit {e['limit']}" if e.get("limit") else ""
        return (f"--benchmark {e['benchmark']} --scenario {e['scenario']} --benchmarks-root {self.config['benchmarks']}"
                + limit)

    def sample_inputs(self, evalset: str) -> list[str]:
        e = self.evalsets[evalset]
        return [self.dataset(f"test_k{e['n']}"), self.validated(f"test_k{e['n']}")] if e["family"] == "heldout" else []

    def own_env_table(self, metric: str, source: str, evalset: str) -> str:
        return f"{self.results}/evals_env/{metric}/{source}/evalset~{evalset}.csv"

    def own_env_tables(self, source: str, evalset: str) -> list[str]:
        """The evaluation's rows scored in their own environments, merged by the evaluate job."""
        return [self.own_env_table(m, source, evalset) for m in self.evalsets[evalset]["metrics"]
                if m in OWN_ENV_METRICS]

    def evaluate_inputs(self, source: str, evalset: str) -> dict:
        return {"samples": self.samples_dir(source, evalset), "metrics": self.metrics_config_file(),
                "extra": self.own_env_tables(source, evalset)}

    def evaluate_args(self, source: str, evalset: str) -> str:
        e = self.evalsets[evalset]
        main = [m for m in e["metrics"] if m not in OWN_ENV_METRICS]
        extra = self.own_env_tables(source, evalset)
        args = [f"--evalset {evalset}", f"--benchmark {e['benchmark']}", f"--scenario {e['scenario']}",
                "--metric-names " + ",".join(main)] + [f"--extra-table {t}" for t in extra]
        if e["family"] == "heldout":
            args.append(f"--n {e['n']}")
        else:
            args.append(f"--benchmarks-root {self.config['benchmarks']}")
        return " ".join(args)

    def log_tags(self, study: str, source: str) -> str:
        """The grid columns of this training in this study (e.g. alpha/beta in the sweep), as run tags."""
        rows = [r for r in self.grids[study] if self.source_of(r) == source]
        method = source.split("method~")[1].split("/")[0]
        tags = {"method": method, **{k: str(v) for k, v in (rows[0] if rows else {}).items()}}
        tags.update({"study": study, "label": self.methods[method].get("label", "")})
        return json.dumps(tags)

    def log_inputs(self, study: str, source: str) -> dict:
        out = {"evals": [self.eval_dir(source, e) for e in self.config["studies"][study]["evalsets"]]}
        if not source.startswith(("official/", "bounds/")):
            out["run"] = f"{self.results}/runs/{source}/{DONE}"
        return out

    # ------------------------------------------------------------ tables

    def table_params(self, study: str) -> str:
        """What the table builder needs besides the runs: method order and labels, paper names and values."""
        listed = self.config["studies"][study].get("methods", [])  # the study's order (bounds first and last)
        methods = dict.fromkeys(listed) | dict.fromkeys(r["method"] for r in self.grids[study])
        return json.dumps({"methods": {m: {k: self.methods[m].get(k, "") for k in ("label", "paper")} for m in methods},
                           "paper_values": self.config.get("paper_values"), "profile": self.config["profile"]})

    def table_forms(self, key: str, csv: str) -> dict:
        """A table's files: its readable CSV and, under <results>/tables/, the tidy long CSV it is computed from
        (<name>_tidy.csv), Markdown (<name>.md) and LaTeX (<name>.tex); keys <key>, <key>_tidy, <key>_md, <key>_tex."""
        name = os.path.basename(csv)[: -len(".csv")]
        t = f"{self.results}/tables"
        return {key: csv, f"{key}_tidy": f"{t}/{name}_tidy.csv", f"{key}_md": f"{t}/{name}.md",
                f"{key}_tex": f"{t}/{name}.tex"}

    def _table_outputs(self) -> dict:
        """study -> output key -> path of its tables_<study> rule (every form of each table, and its figures)."""
        r, forms = self.results, self.table_forms
        return {
            "ablation": {**forms("ablation", f"{r}/ablation.csv"), "attention": f"{r}/figures/attention"},
            "sweep": {**forms("sweep", f"{r}/sweep_alpha_beta.csv"), "heatmap": f"{r}/figures/sweep_alpha_beta.png"},
            "scaling": {**forms("scaling", f"{r}/scaling.csv"), "figure": f"{r}/figures/scaling.png"},
            "benchmark": {**forms("main", f"{r}/tables/main.csv"),
                          **forms("xversebench", f"{r}/tables/xversebench.csv")},
        }
