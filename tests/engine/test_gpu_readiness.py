"""The GPU branches' decisions, checked on the CPU: where the feature cache lives."""

from __future__ import annotations

from vgkit.engine.bundle import cache_fits_gpu

GB = 2**30


def test_the_cache_goes_to_the_gpu_when_it_takes_at_most_half_the_free_memory():
    # ReferIt's fp16 VGG16 cache is ~4 GB: on an H200 (~139 GB free) it moves over whole
    assert cache_fits_gpu(4 * GB, 139 * GB)
    assert cache_fits_gpu(8 * GB, 16 * GB)
    assert not cache_fits_gpu(8 * GB + 1, 16 * GB)  # the model keeps the other half
    assert not cache_fits_gpu(4 * GB, 6 * GB)


def test_moving_to_the_device_it_is_on_is_free():
    import torch

    from vgkit.engine.bundle import to_device

    t = torch.arange(4)
    assert to_device(t, torch.device("cpu")) is t
    assert to_device(None, torch.device("cpu")) is None
