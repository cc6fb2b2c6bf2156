"""A full disk while writing a checkpoint or the exported weights: a clear error, the previous
checkpoint (or file) intact and usable, and no partial file left in its place.

The disk is a small tmpfs mounted by the test (skipped, with the reason, where mounting is not
permitted); it is filled to just under the size of the write that must fail.
"""
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from mosaic.config import load_config
from mosaic.data.synthetic import generate_dataset
from mosaic.model import LoraSpec, build_model
from mosaic.infra.runfolder import CHECKPOINTS
from mosaic.train import TrainingError, latest_checkpoint, train


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs at tmp_path/disk."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): needs root or CAP_SYS_ADMIN")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk, leave: int) -> None:
    """Fill `disk` until at most `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def config(tmp_path, out, *extra):
    data = tmp_path / "data"
    if not data.exists():
        generate_dataset(data, 4, 0, "train", 1, 2)
    return load_config(None, [f"data.train={data}", "data.val=null", "model.flavour=debug", "variant=disk",
                              f"train.output_dir={out}", "train.steps=6", "train.batch_size=2",
                              "train.checkpoint_every=2", "tracking.enabled=false", *extra])


def test_checkpoint_onto_a_full_disk_keeps_the_previous_one(tmp_path, small_disk):
    out = small_disk / "run"
    first = train(config(tmp_path, out), stop_after=2)
    assert first.status == "interrupted" and latest_checkpoint(out) == "step_00000002"
    fill(small_disk, size(out / CHECKPOINTS / "step_00000002") // 2)
    with pytest.raises(TrainingError, match=r"step 4: writing checkpoint .*step_00000004 failed .*"
                                            r"previous checkpoint is intact: step_00000002"):
        train(config(tmp_path, out))
    assert latest_checkpoint(out) == "step_00000002"
    left = sorted(p.name for p in (out / CHECKPOINTS).iterdir() if p.name.startswith(("step_", ".")))
    assert left == ["step_00000002"]  # no partial checkpoint, no temporary pointer
    # the kept checkpoint is sound: with space freed, the resumed run equals an uninterrupted one
    (small_disk / "filler").unlink()
    resumed = train(config(tmp_path, out))
    straight = train(config(tmp_path, tmp_path / "straight"))
    a, b = load_file(resumed.output), load_file(straight.output)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_lora_onto_a_full_disk_keeps_the_previous_file(small_disk):
    model = build_model("debug", lora=LoraSpec(rank=4, alpha=4), seed=0)
    path = model.save_lora(small_disk / "lora.safetensors")
    before = path.read_bytes()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(1.0)
    fill(small_disk, len(before) // 2)
    with pytest.raises(Exception, match="No space left"):  # safetensors' own error type
        model.save_lora(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "lora.safetensors"]  # no temporary left


def test_base_weights_onto_a_full_disk_leave_no_partial_folder(small_disk):
    model = build_model("debug", lora=None, seed=0)
    target = small_disk / "transformer"
    fill(small_disk, 64 * 1024)
    with pytest.raises(Exception, match="No space left"):
        model.save_base(target)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
