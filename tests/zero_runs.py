"""The trainings test_train_zero3 compares, run in one two-process launch (torchrun, gloo, CPU):
`python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.zero_runs ROOT TRAIN VAL`.

One launch for all of them, because starting two processes with DeepSpeed costs more than a
20-step debug training. Each run's folder is ROOT/<name>; the pytest side reads what they export.
"""
import sys
from pathlib import Path

from mosaic.config import load_config
from mosaic.train import train

COMMON = ["model.flavour=debug", "variant=test", "train.steps=20", "train.batch_size=2", "train.checkpoint_every=5",
          "train.lr=1e-3", "train.warmup_steps=3", "train.drop_image=0.2", "train.drop_text=0.2",
          "train.drop_both=0.1", "tracking.enabled=false"]
EMA = ["train.ema_decay=0.9"]
# name -> (extra overrides, stop_after: the run stops there with a checkpoint and is started again)
RUNS = {
    "lora_s2": (["train.zero_stage=2"], None),
    "lora_s3": (["train.zero_stage=3"], None),
    "lora_s3_checkpointed": (["train.zero_stage=3", "model.gradient_checkpointing=true"], None),  # recomputes
    "ema_s2": (["train.zero_stage=2", *EMA], None),
    "ema_s3": (["train.zero_stage=3", *EMA], None),
    "ema_s3_resumed": (["train.zero_stage=3", *EMA], 7),
    "base_s2": (["train.zero_stage=2", "train.mode=base", "train.steps=6", *EMA], None),
    "base_s3": (["train.zero_stage=3", "train.mode=base", "train.steps=6", *EMA], None),
}
for _name, _cls in (("dreamo", "DreamOExtension"), ("xverse", "XVerseExtension")):  # the controlled baselines'
    for _stage in (2, 3):  # extensions: own trainable modules, own export file
        RUNS[f"{_name}_s{_stage}"] = ([f"train.zero_stage={_stage}", "train.steps=6", "loss.alpha=0", "loss.beta=0",
                                       f"model.extension=baselines.controlled.{_name}:{_cls}"], None)
WITH_VAL = ("lora_s2", "lora_s3")  # the after-training evaluation, on every rank under ZeRO-3


def main(root: str, data: str, val: str) -> None:
    for name, (extra, stop_after) in RUNS.items():
        sets = [*COMMON, f"data.train={data}", f"train.output_dir={Path(root) / name}", *extra,
                *([f"data.val={val}", "eval.timesteps=[0.5]"] if name in WITH_VAL else ["data.val=null"])]
        if stop_after is not None:
            first = train(load_config(None, sets), stop_after=stop_after)
            assert (first.status, first.step) == ("interrupted", stop_after), first
        result = train(load_config(None, sets))
        assert result.status == "finished", (name, result)


if __name__ == "__main__":
    main(*sys.argv[1:])
