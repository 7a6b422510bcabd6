"""The CUDA path (bf16 autocast, channels_last, prefetching, compile) and its CPU fallbacks.

Tests marked ``cuda`` skip on machines without a CUDA device; the others check that the
same options leave the CPU path working and exact.
"""

import pytest
import torch

from lmbench import memory
from lmbench.config import RunConfig
from lmbench.runner import build_dataset, build_method, run
from lmbench.train import CHECKPOINT, BatchLoader, TrainOptions, autocast_for, load_checkpoint, prepare_method

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")


def tiny_config(**overrides) -> RunConfig:
    config = RunConfig(method="tiny", dataset="blobs", K=3, steps=6, batch_size=4, image_size=32, seed=2,
                       log_every=1, checkpoint_every=3, device="cpu")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_options_as_they_apply_per_device():
    options = TrainOptions()
    assert options.effective(torch.device("cpu")) == {"amp": "off", "channels_last": False, "compile": False,
                                                      "prefetch": False, "keep_freed_memory": memory.available()}
    assert options.effective(torch.device("cuda")) == {"amp": "bf16", "channels_last": True, "compile": False,
                                                       "prefetch": True, "keep_freed_memory": False}
    assert TrainOptions(amp=False, channels_last=False).effective(torch.device("cuda"))["amp"] == "off"
    with autocast_for(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")  # bf16 on the CPU would be slower, and inexact


def test_channels_last_on_the_cpu_gives_the_same_training(test_plugin, tmp_path):
    run(tiny_config(), tmp_path / "a")
    run(tiny_config(), tmp_path / "b", options=TrainOptions(channels_last=True))
    a, b = load_checkpoint(tmp_path / "a" / CHECKPOINT)["model"], load_checkpoint(tmp_path / "b" / CHECKPOINT)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_compile_keeps_parameter_names(test_plugin):
    method = build_method(tiny_config())
    names = list(method.state_dict())
    prepare_method(method, torch.device("cpu"), TrainOptions(compile=True))
    assert list(method.state_dict()) == names  # checkpoints stay loadable with and without --compile


@cuda
def test_prefetched_batches_equal_the_synchronous_ones(test_plugin):
    config = tiny_config(device="cuda")
    data = build_dataset(config).train
    method = build_method(config)
    device = torch.device("cuda")
    eager = BatchLoader(method, data, config, device, options=TrainOptions(prefetch=False))
    ahead = BatchLoader(method, data, config, device, options=TrainOptions(prefetch=True))
    try:
        for step in (0, 1, 2, 5, 6):  # includes a jump, which falls back to a direct load
            a, b = eager.get(step), ahead.get(step)
            assert a.keys() == b.keys()
            assert torch.equal(a["images"], b["images"]) and b["images"].is_contiguous(memory_format=torch.channels_last)
    finally:
        ahead.close()


@cuda
def test_cuda_run_with_bf16_and_channels_last_trains_resumes_and_loads_on_the_cpu(test_plugin, tmp_path):
    run(tiny_config(device="cuda", steps=3), tmp_path / "r")
    metrics = run(tiny_config(device="cuda"), tmp_path / "r", resume=True)
    assert metrics["device"].startswith("cuda") and metrics["steps"] == 6
    state = torch.load(tmp_path / "r" / CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["step"] == 6 and all(torch.isfinite(v).all() for v in state["model"].values())
    method = build_method(tiny_config())
    method.load_state_dict(state["model"])  # a CUDA checkpoint loads into a CPU method


@cuda
def test_cuda_run_is_deterministic_without_amp(test_plugin, tmp_path):
    options = TrainOptions(amp=False, channels_last=False)
    run(tiny_config(device="cuda"), tmp_path / "a", options=options)
    run(tiny_config(device="cuda"), tmp_path / "b", options=options)
    a, b = load_checkpoint(tmp_path / "a" / CHECKPOINT)["model"], load_checkpoint(tmp_path / "b" / CHECKPOINT)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
