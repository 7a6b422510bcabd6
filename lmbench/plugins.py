"""The plugin manager: built-in plugins first, then the ``lmbench`` entry-point group, then
the modules or files named in ``$LMBENCH_PLUGINS``.

A plugin that fails to import is reported with a warning naming it and skipped, so that
commands that do not need it keep working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import warnings
from pathlib import Path

import pluggy

from lmbench import hookspecs

# lmbench's own plugins, registered exactly like third-party ones.
DEFAULT_PLUGINS = (
    "lmbench.methods.baseline",
    "lmbench.methods.inter_intra",
    "lmbench.methods.supervised",
    "lmbench.methods.zhang",
    "lmbench.bench",
    "lmbench.datasets.synthetic",
    "lmbench.datasets.celeba",
    "lmbench.datasets.aflw",
    "lmbench.datasets.mtfl",
    "lmbench.datasets.w300",
    "lmbench.datasets.folder",
    "lmbench.prepare",
    "lmbench.datasets.mpii",
    "lmbench.pretrain",
)

ENTRY_POINT_GROUP = "lmbench"
# Extra plugins for this process: comma-separated module names or paths to .py files.
ENV_PLUGINS = "LMBENCH_PLUGINS"

_manager: pluggy.PluginManager | None = None


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or registered."""


def _register(pm: pluggy.PluginManager, load, name: str, origin: str) -> None:
    try:
        pm.register(load(), name=name)
    except Exception as error:  # noqa: BLE001 - any failure of a plugin must not stop lmbench
        warnings.warn(
            f"lmbench plugin {name!r} ({origin}) failed to load and is skipped: "
            f"{type(error).__name__}: {error}",
            PluginLoadWarning,
            stacklevel=3,
        )


def _load_file(path: Path):
    """Import a plugin from a .py file (for LMBENCH_PLUGINS)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"lmbench_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env_plugins() -> list[str]:
    return [item.strip() for item in os.environ.get(ENV_PLUGINS, "").split(",") if item.strip()]


def _build() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("lmbench")
    pm.add_hookspecs(hookspecs)
    for module in DEFAULT_PLUGINS:
        _register(pm, lambda m=module: importlib.import_module(m), module, "built-in")
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(entry_point.name) is None:
            _register(pm, entry_point.load, entry_point.name, f"entry point {entry_point.value}")
    for item in _env_plugins():
        if item.endswith(".py"):
            _register(pm, lambda p=Path(item): _load_file(p), item, f"${ENV_PLUGINS} file")
        else:
            _register(pm, lambda m=item: importlib.import_module(m), item, f"${ENV_PLUGINS} module")
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _manager
    if _manager is None:
        _manager = _build()
    return _manager


def reset_plugin_manager() -> None:
    """Forget the plugin manager so that the next use rebuilds it (for tests)."""
    global _manager
    _manager = None
