import json

import pytest
from click.testing import CliRunner

from lmbench.bench import bench_command, bench_config
from lmbench.config import RunConfig
from lmbench.generative import GENERATIVE_BETAS, GENERATIVE_EMA_DECAY, GENERATIVE_HEAD_INIT_GAIN

KEYS = {"method", "preset", "image_size", "batch_size", "K", "images_per_second", "seconds_per_step",
        "peak_memory_mb", "device", "threads", "cpu_capability", "keep_freed_memory", "page_faults_per_step", "torch"}
TINY = ["--preset", "small", "--image-size", "32", "--batch-size", "2", "--K", "3", "--steps", "1", "--warmup", "1",
        "--perceptual", "none", "--device", "cpu"]


@pytest.mark.parametrize("method", ["baseline", "inter_intra", "tiny"])
def test_bench_prints_one_json_line(test_plugin, method):
    result = CliRunner().invoke(bench_command, ["--method", method, *TINY])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert KEYS <= set(record)
    assert record["method"] == method and record["batch_size"] == 2 and record["K"] == 3
    assert record["images_per_second"] > 0 and record["peak_memory_mb"] > 0 and record["device"] == "cpu"


def test_bench_is_a_plugin_command_of_the_cli(fresh_plugins):
    from lmbench.cli import _add_plugin_commands, cli

    _add_plugin_commands()
    _add_plugin_commands()  # idempotent
    assert cli.commands["bench"] is bench_command


def test_unknown_method_is_a_usage_error(fresh_plugins):
    result = CliRunner().invoke(bench_command, ["--method", "nope", *TINY])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output


def test_an_image_size_the_hourglass_cannot_take_is_refused(fresh_plugins):
    from lmbench.cli import _add_plugin_commands, cli

    _add_plugin_commands()
    args = ["--method", "baseline", *TINY]
    args[args.index("--image-size") + 1] = "48"
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 1 and "--image-size 48" in result.output and "multiple of 32" in result.output


def test_paper_preset_is_the_original_architecture():
    config = bench_config("inter_intra", preset="paper")
    assert (config.detector.channels, config.detector.depth) == (256, 4)
    assert (config.generator.conv_dim, config.generator.res_blocks) == (32, 6)
    assert config.generator.input_norm  # the original's BatchNorm over [features; heatmaps]
    assert config.perceptual.backbone == "vgg16" and config.perceptual.layers is None
    assert config.warp.tps_sigma == 0.0  # the papers' similarity pairs, no TPS jitter
    assert config.warp.mask_padding is False  # and their loss over every pixel of x'
    assert config.detector.head_init_gain == 1.0  # and PyTorch's initialisation
    assert tuple(config.optim.betas) == (0.0, 0.9)  # and the originals' Adam, without momentum
    assert config.optim.ema_decay == 0.0  # and no weight average
    small = bench_config("inter_intra", preset="small")
    assert small.detector.channels == 96 and small.warp.tps_sigma == RunConfig().warp.tps_sigma
    assert small.detector.head_init_gain == GENERATIVE_HEAD_INIT_GAIN
    assert tuple(small.optim.betas) == GENERATIVE_BETAS
    assert small.optim.ema_decay == GENERATIVE_EMA_DECAY
    assert small.warp.mask_padding is True


def test_bench_applies_the_methods_own_defaults():
    config = bench_config("zhang", preset="paper")
    # zhang's original has no perceptual loss and TF-Adam betas: bench times what `run` trains.
    assert config.perceptual.backbone == "none" and tuple(config.optim.betas) == (0.9, 0.999)
    assert config.detector.channels == 256
    assert bench_config("zhang", preset="paper", perceptual="alexnet").perceptual.backbone == "alexnet"


def test_bench_set_overrides_the_preset(fresh_plugins):
    config = bench_config("inter_intra", preset="paper", overrides=("method_options.routing=separate", "K=4"))
    assert config.method_options == {"routing": "separate"} and config.K == 4
    assert config.detector.channels == 256  # the rest of the preset stays


def test_bench_names_a_bad_set_and_exits_non_zero(fresh_plugins):
    result = CliRunner().invoke(bench_command, ["--method", "cycle", *TINY, "--set", "nosuch.key=1"])
    assert result.exit_code == 2 and "unknown setting 'nosuch'" in result.output
    result = CliRunner().invoke(bench_command, ["--method", "cycle", *TINY, "--set", "method_options.routing=split"])
    assert result.exit_code == 1 and "method_options.routing must be one of batched, separate" in result.output


def test_bench_records_its_overrides(fresh_plugins):
    result = CliRunner().invoke(bench_command, ["--method", "cycle", *TINY, "--set", "method_options.routing=separate"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["overrides"] == ["method_options.routing=separate"]
