import importlib.metadata
import sys
import types

import pytest

from lmbench import plugins, registry
from lmbench.plugins import PluginLoadWarning


def test_builtin_plugins_register_like_third_party(fresh_plugins):
    assert "baseline" in registry.methods()
    assert registry.get_method("baseline").plugin == "lmbench.methods.baseline"
    assert "synthetic" in registry.datasets()


def test_test_suite_plugin_is_registered_and_runs(test_plugin, tmp_path):
    from lmbench.config import RunConfig
    from lmbench.runner import run

    assert registry.get_method("tiny").plugin == "lmbench-test-plugin"
    config = RunConfig(method="tiny", dataset="blobs", K=3, steps=3, batch_size=4, image_size=32, log_every=1)
    metrics = run(config, tmp_path / "run")
    assert metrics["method"] == "tiny" and metrics["steps"] == 3


def test_unknown_name_lists_valid_names(fresh_plugins):
    with pytest.raises(registry.UnknownName, match="valid methods: .*baseline"):
        registry.get_method("nope")
    with pytest.raises(registry.UnknownName, match="valid datasets: .*synthetic"):
        registry.get_dataset("nope")


def test_two_plugins_claiming_one_name_is_an_error_naming_both(fresh_plugins):
    from plugin_fixtures import ClashingPlugin

    fresh_plugins.register(ClashingPlugin(), name="clashing-plugin")
    with pytest.raises(registry.PluginConflict) as error:
        registry.methods()
    assert "lmbench.methods.baseline" in str(error.value) and "clashing-plugin" in str(error.value)


def _fake_entry_points(monkeypatch, entries):
    eps = [importlib.metadata.EntryPoint(name=name, value=value, group="lmbench") for name, value in entries]
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        if kwargs.get("group") == "lmbench":
            return eps
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_entry_point_plugins_are_discovered(monkeypatch):
    module = types.ModuleType("lmbench_third_party_ok")
    from plugin_fixtures import TestPlugin

    plugin = TestPlugin()
    module.register_methods = plugin.register_methods
    monkeypatch.setitem(sys.modules, "lmbench_third_party_ok", module)
    _fake_entry_points(monkeypatch, [("third-party", "lmbench_third_party_ok")])
    plugins.reset_plugin_manager()
    try:
        spec = registry.get_method("tiny")
        assert spec.plugin == "third-party"
    finally:
        plugins.reset_plugin_manager()


def test_broken_plugin_warns_and_the_rest_keeps_working(monkeypatch):
    _fake_entry_points(monkeypatch, [("broken-plugin", "lmbench_no_such_module_xyz")])
    plugins.reset_plugin_manager()
    try:
        with pytest.warns(PluginLoadWarning, match="broken-plugin"):
            plugins.get_plugin_manager()
        assert "baseline" in registry.methods()
    finally:
        plugins.reset_plugin_manager()
