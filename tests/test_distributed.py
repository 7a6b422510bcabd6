"""Multi-process training: 2 gloo processes under torchrun match one process on the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmbench.config import RunConfig
from lmbench.distributed import World, select_rows
from lmbench.hookspecs import hookimpl
from lmbench.method import LandmarkMethod
from lmbench.nn.bottleneck import softargmax
from lmbench.registry import MethodSpec
from lmbench.runner import run
from lmbench.train import CHECKPOINT, load_checkpoint
from lmbench.warps import compose, random_similarity, random_tps

TESTS = Path(__file__).parent


class WarpedTiny(LandmarkMethod):
    """A one-conv method whose loss depends on per-sample random warps (drawn for the global batch)."""

    slices_randomness = True

    def __init__(self, config):
        super().__init__(config)
        self.detector = nn.Conv2d(3, config.K, 3, padding=1)

    def losses(self, images, generator, points=None):
        warp = random_similarity(self.random_batch(images), rotation_deg=40.0, scale=(0.7, 1.3), translation=0.3,
                                 generator=generator)
        warped = self.local_rows(warp).apply_to_images(images)
        maps = self.detector(warped)
        return {"peak": -maps.flatten(2).max(-1).values.mean() * 1e-2,
                "fit": F.mse_loss(maps.mean(1, keepdim=True), warped.mean(1, keepdim=True))}

    def detect(self, images):
        return softargmax(self.detector(images), 0.1)


class WarpedPlugin:
    @hookimpl
    def register_methods(self):
        return [MethodSpec("warped-tiny", "a test method with per-sample random warps", WarpedTiny)]


LAUNCHER = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from lmbench import plugins
from plugin_fixtures import TestPlugin
from test_distributed import WarpedPlugin
pm = plugins.get_plugin_manager()
pm.register(TestPlugin(), name="lmbench-test-plugin")
pm.register(WarpedPlugin(), name="lmbench-warped-plugin")
from lmbench.cli import main
main()
"""


def config(**overrides) -> RunConfig:
    c = RunConfig(method="warped-tiny", dataset="blobs", K=3, steps=5, batch_size=8, image_size=32,
                  log_every=1, checkpoint_every=5, seed=3, device="cpu")
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


def test_rows_partition_the_global_batch():
    rows = [World(rank, 4).rows(12) for rank in range(4)]
    assert [i for r in rows for i in range(12)[r]] == list(range(12))
    with pytest.raises(ValueError, match="--batch-size 10 does not divide among 4 processes"):
        World(0, 4).rows(10)


def test_select_rows_of_a_warp_is_the_warp_of_those_rows():
    g = torch.Generator().manual_seed(0)
    warp = compose(random_similarity(6, rotation_deg=20.0, scale=(0.9, 1.1), translation=0.1, generator=g),
                   random_tps(6, sigma=0.05, generator=g))
    images = torch.rand(6, 3, 16, 16, generator=g)
    rows = slice(2, 4)
    part = select_rows(warp, rows)
    assert part.batch_size == 2 and warp.batch_size == 6
    assert torch.allclose(part.apply_to_images(images[rows]), warp.apply_to_images(images)[rows], atol=1e-6)
    points = torch.rand(6, 5, 2, generator=g) - 0.5
    assert torch.allclose(part.map_points(points[rows]), warp.map_points(points)[rows], atol=1e-5)
    assert select_rows({"a": torch.arange(6), "b": [torch.arange(6)]}, rows)["b"][0].tolist() == [2, 3]


def test_local_rows_is_the_identity_in_one_process():
    method = WarpedTiny(config())
    x = torch.arange(8)
    assert method.random_batch(torch.zeros(8, 3, 4, 4)) == 8 and method.local_rows(x) is x
    method.sample_slice, method.global_batch = slice(4, 8), 8
    assert method.random_batch(torch.zeros(4, 3, 4, 4)) == 8 and method.local_rows(x).tolist() == [4, 5, 6, 7]


def test_two_gloo_processes_match_one_process(fresh_plugins, tmp_path):
    """torchrun, 2 CPU processes, global batch 8 (4 each) vs one process with batch 8.

    Tolerance: weights within 1e-6 and logged losses within 1e-6 relative (the gradient
    all-reduce sums in another order; the method has no BatchNorm). Sample-for-sample
    warps matter: with per-process streams the losses differ by ~1e-2.
    """
    fresh_plugins.register(WarpedPlugin(), name="lmbench-warped-plugin")
    from plugin_fixtures import TestPlugin

    fresh_plugins.register(TestPlugin(), name="lmbench-test-plugin")
    run(config(), tmp_path / "single")

    work = tmp_path / "ddp"
    work.mkdir()
    (work / "launch.py").write_text(LAUNCHER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "launch.py",
               "run", "--method", "warped-tiny", "--dataset", "blobs", "--K", "3", "--steps", "5", "--batch-size", "8",
               "--image-size", "32", "--seed", "3", "--device", "cpu", "--out", "out",
               "--set", "log_every=1", "--set", "checkpoint_every=5"]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # One run directory, written once (by rank 0), with the single-process run's files.
    assert sorted(p.name for p in work.iterdir()) == ["launch.py", "out"]
    assert {p.name for p in (work / "out").iterdir()} == {p.name for p in (tmp_path / "single").iterdir()}
    assert json.loads((work / "out" / "metrics.json").read_text())["world_size"] == 2
    assert json.loads((work / "out" / "config.json").read_text())["train_options"]["world_size"] == 2

    single = load_checkpoint(tmp_path / "single" / CHECKPOINT)["model"]
    ddp = load_checkpoint(work / "out" / CHECKPOINT)["model"]
    for key in single:
        assert torch.allclose(single[key], ddp[key], atol=1e-6, rtol=0), key
    assert not torch.equal(single["detector.weight"], WarpedTiny(config()).state_dict()["detector.weight"])

    def losses(path):
        return [json.loads(line)["loss"] for line in (path / "metrics.jsonl").read_text().splitlines()]

    assert losses(work / "out") == pytest.approx(losses(tmp_path / "single"), rel=1e-6)


def test_the_reconstructions_figure_skips_passes_that_would_wait_for_other_processes(monkeypatch, tmp_path):
    """Rank 0 draws reconstructions.png alone while the others wait at a barrier: with
    SyncBatchNorm (CUDA under torchrun) a training-mode pass would wait for them forever."""
    import numpy as np

    import lmbench.distributed as distributed
    from lmbench.data import ImageSplit
    from lmbench.runner import RECONSTRUCTIONS, save_reconstructions

    class Shows(LandmarkMethod):
        def __init__(self, config):
            super().__init__(config)
            self.norm = nn.SyncBatchNorm(3)

        def losses(self, images, generator, points=None):
            self.show(("x", images))
            return {}

    config = RunConfig(K=3, image_size=16)
    split = ImageSplit(np.zeros((8, 16, 16, 3), dtype=np.uint8), None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 2)
    assert distributed.syncs_batch_norm(Shows(config))
    save_reconstructions(Shows(config), split, config, tmp_path, torch.device("cpu"))
    assert not (tmp_path / RECONSTRUCTIONS).exists()
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda group=None: 1)
    assert not distributed.syncs_batch_norm(Shows(config))
    save_reconstructions(Shows(config), split, config, tmp_path, torch.device("cpu"))
    assert (tmp_path / RECONSTRUCTIONS).exists()
