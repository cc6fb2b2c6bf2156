"""mosaic.infra.safeload: checkpoints load as tensors only, model folders through native classes; and the source
tree loads third-party weights no other way."""
import ast
import json
import pathlib
from pathlib import Path

import pytest
import torch

from mosaic.infra.safeload import UnsafeCheckpoint, pretrained, torch_file

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this would create the sentinel file: what a malicious checkpoint does."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return pathlib.Path.touch, (self.sentinel,)


def test_a_state_dict_loads_and_a_pickled_object_is_refused_naming_the_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "epoch": 2}, good)
    assert torch.equal(torch_file(good)["state_dict"]["w"], torch.arange(3.0))
    bad, sentinel = tmp_path / "model_ir_se50.pth", tmp_path / "ran"
    torch.save({"w": torch.zeros(1), "extra": _Payload(sentinel)}, bad)
    with pytest.raises(UnsafeCheckpoint, match=rf"{bad}: this ArcFace checkpoint holds more than tensors"):
        torch_file(bad, "ArcFace checkpoint")
    assert not sentinel.exists()  # refused before anything in it ran
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/none.pt: checkpoint not found"):
        torch_file(tmp_path / "none.pt")


def test_hps_checkpoint_goes_through_the_safe_loader(tmp_path):
    import metrics.hps as hps

    bad = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {}, "x": _Payload(tmp_path / "ran")}, bad)
    with pytest.raises(UnsafeCheckpoint, match=str(bad)):
        hps.load_hps_checkpoint(torch.nn.Linear(1, 1), bad)
    assert not (tmp_path / "ran").exists()


@pytest.fixture()
def folder_with_code(tmp_path):
    """A tiny native BERT folder whose config also points AutoModel at its own Python file (auto_map)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertModel(cfg).save_pretrained(tmp_path / "m")
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    conf["auto_map"] = {"AutoModel": "modeling_own.OwnModel"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(conf))
    (tmp_path / "m" / "modeling_own.py").write_text(
        f"import pathlib\npathlib.Path({str(tmp_path / 'ran')!r}).touch()\n"
        "from transformers import BertModel as OwnModel\n")
    return tmp_path / "m", tmp_path / "ran"


def test_a_model_folder_loads_its_native_class_and_never_its_own_code(folder_with_code):
    from transformers import AutoModel, BertModel

    folder, sentinel = folder_with_code
    net = pretrained(AutoModel, folder, {}, "ip_sim")
    assert type(net) is BertModel and not sentinel.exists()
    with pytest.raises(ValueError, match=r"ip_sim\.trust_remote_code: 'yes' must be true or false"):
        pretrained(AutoModel, folder, {"trust_remote_code": "yes"}, "ip_sim")


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_source_tree_loads_weights_only_through_safe_paths():
    """torch.load always with weights_only=True; trust_remote_code passed only by mosaic.infra.safeload (config-gated)."""
    offenders = []
    for path in sorted(p for d in ("mosaic", "metrics", "baselines", "workflow", "bench") for p in (ROOT / d).rglob("*.py")):
        if path == ROOT / "mosaic" / "infra" / "safeload.py":
            continue
        for node, func in _calls(ast.parse(path.read_text(), str(path))):
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if func.endswith("torch.load") and not (isinstance(kw.get("weights_only"), ast.Constant)
                                                   and kw["weights_only"].value is True):
                offenders.append(f"{where}: torch.load without weights_only=True")
            if "trust_remote_code" in kw:
                offenders.append(f"{where}: trust_remote_code outside mosaic.infra.safeload.pretrained")
    assert not offenders, "\n".join(offenders)
