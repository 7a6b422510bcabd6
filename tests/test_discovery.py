"""End to end: an unsupervised method discovers landmarks better than the trivial floors.

Zhang et al.'s method with a small hourglass on the test suite's blobs (two bright squares
at a random position; the annotated points ride on them). Its discovered points, through
the regressor, must beat both the mean shape and the same detector untrained.
"""

import pytest

from lmbench.config import RunConfig
from lmbench.runner import run


@pytest.mark.slow
def test_zhang_discovers_the_blobs_better_than_the_floors(test_plugin, tmp_path):
    config = RunConfig(method="zhang", dataset="blobs", K=4, steps=150, batch_size=16, image_size=32, seed=0,
                       dataset_options={"n": 256}, checkpoint_every=1000)
    config.detector.channels, config.detector.depth, config.detector.stem_channels = 24, 1, 16
    config.generator.conv_dim, config.generator.res_blocks = 8, 1
    config.perceptual.backbone = "none"
    config.optim.betas, config.optim.weight_decay = (0.9, 0.999), 1e-6
    config.protocol.sweep_sizes = (10,)
    metrics = run(config, tmp_path / "run")
    assert metrics["nme_mean_shape"] > 20.0  # the blobs move: the floor is far from good
    assert metrics["nme"] < 0.2 * metrics["nme_mean_shape"], metrics
    assert metrics["nme"] < 0.75 * metrics["nme_untrained"], metrics  # random features already find bright squares
