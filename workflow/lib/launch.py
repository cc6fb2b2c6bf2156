"""The training's launch prefix, from the config's templates and a job's GPU and node counts.

One function renders it for the rules (workflow/rules/common.smk) and for tests: plain Python for
one process, `training.launch` (torch.distributed.run --standalone) for several GPUs on one node,
and `training.launch_nodes` (srun starting one torch.distributed.run per node, which meet at a c10d
rendezvous on the allocation's first node) for several nodes. `gpus` is the job's total GPU count
(the SLURM resource `gpu`, sbatch --gpus), `nodes` its node count (resource `nodes`).
"""
from __future__ import annotations


def launch_prefix(training: dict, gpus: int, nodes: int = 1, py: str = "python") -> str:
    """The command that starts one training process per GPU (per node: gpus // nodes)."""
    gpus, nodes = int(gpus or 0), int(nodes or 1)
    if nodes < 1:
        raise ValueError(f"resources nodes: {nodes}, must be >= 1")
    if nodes > 1:
        if "launch_nodes" not in training:
            raise ValueError(f"training.launch_nodes: missing, needed for a training on {nodes} nodes")
        if gpus < nodes or gpus % nodes:
            raise ValueError(f"resources gpu: {gpus} GPUs do not split evenly over {nodes} nodes")
        return training["launch_nodes"].format(py=py, gpus=gpus // nodes, nodes=nodes)
    if gpus > 1:
        return training["launch"].format(py=py, gpus=gpus, nodes=1)
    return py
