"""The extension points of lmbench, one pluggy hook each.

A plugin is any module or object with functions decorated by :data:`hookimpl`. lmbench's
own methods and datasets are plugins registered exactly like third-party ones; third-party
plugins are found through the ``lmbench`` entry-point group::

    [project.entry-points.lmbench]
    my_method = "my_package.my_plugin"
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lmbench")
hookimpl = pluggy.HookimplMarker("lmbench")


@hookspec
def register_methods():
    """Return a list of :class:`lmbench.registry.MethodSpec` this plugin provides.

    A method spec names a landmark-discovery method, describes it in one line, and gives a
    ``builder(config: RunConfig) -> LandmarkMethod``.
    """


@hookspec
def register_datasets():
    """Return a list of :class:`lmbench.registry.DatasetSpec` this plugin provides.

    A dataset spec names a dataset, describes it in one line, says where its data is looked
    for and in which layout, and gives a ``builder(root, image_size, seed, **options) ->
    DatasetSplits``.
    """


@hookspec
def register_commands(cli):
    """Add click commands to the ``lmbench`` command group ``cli``."""
