"""Workflow adapter: (re)log a finished training and its evaluations into a study's MLflow experiment.

    python workflow/scripts/mlflow_log.py --store results/mlflow --experiment ablation \
        [--train RUN_DIR] [--evals EVAL_DIR ...] [--evaluators DIR] --tags JSON --out MARKER.json

The training run is copied from the run folder's own store (mosaic.infra.tracking.store.copy_run); each
evaluation record becomes a run tagged kind=eval with the training's new run id (train_run_id), over
the evaluation job's own start and end times (record.json), nested under the training run in the UI
(tag mlflow.parentRunId). Evaluations without a training (the bounds) stay top-level runs: a bound is
a reference point beside the trained methods, not a result of one. The evaluators' check values are
logged under "evaluators/" so the UI groups them. The marker lists the run ids; it is written last, so
a failed job leaves none.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PARENT_TAG = "mlflow.parentRunId"  # MLflow's nested runs: the UI lists a run under its parent


def main(argv: list[str] | None = None) -> int:
    from mosaic.infra.runfolder import RUN_ID_FILE, atomic_write
    from mosaic.infra.tracking import store as ms

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--generation", required=True, help="the store generation the workflow planned for")
    p.add_argument("--experiment", required=True)
    p.add_argument("--train", type=Path, help="a training run folder (with mlflow.db and mlflow_run_id)")
    p.add_argument("--evals", type=Path, nargs="*", default=[], help="evaluation folders (record.json)")
    p.add_argument("--evaluators", type=Path, help="a tiny-world evaluators folder (validation.json)")
    p.add_argument("--tags", default="{}", help="JSON: tags of every run logged (the study's grid columns)")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    ms.check_generation(args.store, args.generation)
    uri, tags = ms.store_uri(args.store), json.loads(args.tags)
    name = "-".join(tags[k] for k in ("method", "ktrain", "seed") if tags.get(k))
    marker = {"store": uri, "generation": args.generation, "experiment": args.experiment, "train_run_id": None,
              "eval_run_ids": {}}
    if args.train is not None:
        src_id = (args.train / RUN_ID_FILE).read_text().strip()
        marker["train_run_id"] = ms.copy_run(ms.store_uri(args.train), src_id, uri, args.experiment,
                                             f"train:{args.train}", {**tags, "kind": "train",
                                                                     "run_dir": str(args.train.resolve())},
                                             run_name=name or None)  # method-ktrain-seed, as its evaluations
    if args.evaluators is not None:
        validation = json.loads((args.evaluators / "validation.json").read_text())
        record = {"metrics": {f"evaluators/{k}": v for k, v in validation.items() if isinstance(v, (int, float))},
                  "params": {k: v for k, v in validation.items() if not isinstance(v, (int, float))},
                  "artifacts": ["validation.json", "metrics_config.json"]}
        from mosaic.infra.tracking.run import provenance  # this checkout: the one that trained them

        marker["train_run_id"] = ms.log_record(uri, args.experiment, f"evaluators:{args.evaluators}",
                                               "tiny-world evaluators", record, args.evaluators,
                                               {**tags, **provenance(), "kind": "evaluators"})
    for folder in args.evals:
        record = json.loads((folder / "record.json").read_text())
        if ms.record_times(record, folder / "record.json") is None:
            raise ValueError(f"{folder / 'record.json'}: no start_time / end_time (an evaluation written before "
                             f"they were recorded): run its evaluation again (snakemake --forcerun evaluate)")
        link = {"train_run_id": marker["train_run_id"] or "", "kind": "eval", "eval_dir": str(folder.resolve())}
        if args.train is not None:
            link[PARENT_TAG] = marker["train_run_id"]
        evalset = record["tags"]["evalset"]
        marker["eval_run_ids"][evalset] = ms.log_record(uri, args.experiment, f"eval:{folder}", f"{name}/{evalset}",
                                                        record, folder, {**tags, **link})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, json.dumps(marker, indent=2))
    print(json.dumps(marker, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
