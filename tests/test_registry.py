"""mosaic.infra.registry: one registry class for metrics, baselines, flavours and CLI commands."""
import pytest

from baselines.registry import BASELINES
from metrics.registry import METRICS
from mosaic.cli import COMMANDS
from mosaic.model.flavours import FLAVOURS
from mosaic.infra.registry import Registry, import_object


class Thing:
    name = "thing"


def test_decorator_lazy_string_and_unknown_name():
    r = Registry("widget", {"path": "pathlib:Path"})
    assert r.register(Thing) is Thing and r.get("thing") is Thing
    r.register(name="other")(Thing)
    from pathlib import Path
    assert r["path"] is Path and r.names() == ["path", "thing", "other"]
    with pytest.raises(ValueError, match="unknown widget 'nope'; known: path, thing, other"):
        r.get("nope")
    with pytest.raises(ValueError, match="widget 'thing' registered twice"):
        r.register(Thing)


def test_a_bad_lazy_entry_names_itself():
    r = Registry("widget", {"a": "no_such_module:X", "b": "pathlib:NoSuch", "c": "no-colon"})
    with pytest.raises(ValueError, match="widget 'a'.*cannot import 'no_such_module'"):
        r.get("a")
    with pytest.raises(ValueError, match="'pathlib' has no 'NoSuch'"):
        r.get("b")
    with pytest.raises(ValueError, match="expected 'module:object'"):
        import_object("no-colon")


def test_every_registry_of_the_project_is_one():
    import metrics.evaluate  # noqa: F401  (registers the metrics)
    for reg in (METRICS, BASELINES, FLAVOURS, COMMANDS):
        assert isinstance(reg, Registry) and len(reg) >= 3
    assert {"CLIP-I", "CLIP-T", "DINO"} <= set(METRICS)
    assert {"uno", "dreamo", "xverse", "omnicontrol"} <= set(BASELINES)
