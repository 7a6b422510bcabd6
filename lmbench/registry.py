"""Name -> builder registries for methods and datasets, filled from the plugin hooks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmbench.plugins import get_plugin_manager


class PluginConflict(RuntimeError):
    """Two plugins registered the same method or dataset name."""


class UnknownName(KeyError):
    """A method or dataset name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class MethodSpec:
    """A method plugin's entry.

    ``config_defaults`` maps dotted RunConfig keys (as for ``--set``) to the method's own
    defaults, e.g. ``{"optim.weight_decay": 1e-6}``; ``lmbench run`` applies them before the
    command-line options and ``--set`` overrides, so the user still has the last word.
    """

    name: str
    description: str
    builder: Callable[..., Any]
    plugin: str = ""
    config_defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset plugin's entry.

    ``layout`` describes the files expected under the data root; ``is_present(root)`` says
    whether they are there. Datasets that ship with lmbench (``embedded=True``) need no root.
    ``data_dir`` is the folder looked for under ``$LMBENCH_DATA`` (default: ``name``), so that
    two names for one dataset (``mafl`` and ``celeba``) find the same files.
    """

    name: str
    description: str
    builder: Callable[..., Any]
    layout: str = ""
    is_present: Callable[[Path], bool] | None = None
    default_root: str | None = None
    embedded: bool = False
    annotated: bool = True
    plugin: str = ""
    extra: dict = field(default_factory=dict)
    data_dir: str | None = None

    def candidate_roots(self, data_root: str | Path | None = None) -> list[Path]:
        """Where the data is looked for, in order: --data-root, $LMBENCH_DATA/<data_dir>, default."""
        if data_root is not None:
            return [Path(data_root).expanduser()]
        roots = []
        if os.environ.get("LMBENCH_DATA"):
            roots.append(Path(os.environ["LMBENCH_DATA"]).expanduser() / (self.data_dir or self.name))
        if self.default_root:
            roots.append(Path(self.default_root).expanduser())
        return roots

    def find_root(self, data_root: str | Path | None = None) -> Path | None:
        """The first candidate root that holds the data, or None."""
        if self.embedded:
            return None
        for root in self.candidate_roots(data_root):
            if root.exists() and (self.is_present is None or self.is_present(root)):
                return root
        return None


def _collect(hook_name: str) -> dict[str, Any]:
    hook = getattr(get_plugin_manager().hook, hook_name)
    specs: dict[str, Any] = {}
    for impl in hook.get_hookimpls():
        for spec in impl.function() or []:
            spec = type(spec)(**{**spec.__dict__, "plugin": impl.plugin_name})
            if spec.name in specs:
                raise PluginConflict(
                    f"{hook_name}: the name {spec.name!r} is claimed by both plugin "
                    f"{specs[spec.name].plugin!r} and plugin {impl.plugin_name!r}"
                )
            specs[spec.name] = spec
    return dict(sorted(specs.items()))


def methods() -> dict[str, MethodSpec]:
    return _collect("register_methods")


def datasets() -> dict[str, DatasetSpec]:
    return _collect("register_datasets")


def _lookup(kind: str, table: dict[str, Any], name: str) -> Any:
    if name not in table:
        valid = ", ".join(table) or "(none registered)"
        raise UnknownName(f"unknown {kind} {name!r}; valid {kind}s: {valid}")
    return table[name]


def get_method(name: str) -> MethodSpec:
    return _lookup("method", methods(), name)


def get_dataset(name: str) -> DatasetSpec:
    return _lookup("dataset", datasets(), name)
