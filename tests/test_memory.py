"""lmbench.memory: freed CPU memory stays in the process for the next step (glibc)."""

import resource

import numpy as np
import pytest
import torch

from lmbench import memory
from lmbench.train import TrainOptions


def test_freed_large_buffers_are_reused_without_faulting_their_pages_again():
    threshold = memory.keep_freed_memory()
    if threshold == 0:
        pytest.skip("no glibc mallopt on this platform")
    assert memory.keep_freed_memory() == threshold  # once per process
    pages = (64 << 20) // resource.getpagesize()

    def fill_64_mib() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = np.empty(16 << 20, dtype=np.float32)  # 64 MiB: glibc would mmap it, and unmap it on free
        buffer.fill(1.0)
        del buffer
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    fill_64_mib()  # the heap grows once
    assert fill_64_mib() < pages // 10  # then the same pages serve again (unmapped: one fault per page)


def test_the_trainer_keeps_freed_memory_on_the_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert TrainOptions().effective(cpu)["keep_freed_memory"] == memory.available()
    assert not TrainOptions().effective(cuda)["keep_freed_memory"]
    assert not TrainOptions(keep_freed_memory=False).effective(cpu)["keep_freed_memory"]
