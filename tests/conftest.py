import os
import sys
from pathlib import Path

# Tests use tiny tensors: one thread is faster and steadier than two fighting over 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lmbench import plugins  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def fresh_plugins():
    """A plugin manager rebuilt for the test and forgotten afterwards."""
    plugins.reset_plugin_manager()
    yield plugins.get_plugin_manager()
    plugins.reset_plugin_manager()


@pytest.fixture
def test_plugin(fresh_plugins):
    """The test suite's own plugin (tiny method, blobs dataset), registered like a third party's."""
    from plugin_fixtures import TestPlugin

    fresh_plugins.register(TestPlugin(), name="lmbench-test-plugin")
    return fresh_plugins


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep lmbench's cache inside the test session, but share it across tests."""
    monkeypatch.setenv("LMBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "lmbench-cache"))
