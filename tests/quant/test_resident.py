from __future__ import annotations

import threading

import pytest
import torch

from quant.errors import ConfigError
from quant.resident import PeakResident, release_freed, resident_bytes

MB = 1_000_000


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "PeakResident"]


def test_resident_bytes_follows_a_touched_allocation() -> None:
    before = resident_bytes()
    x = torch.ones(50_000_000)  # 200 MB, every page written so it is resident
    during = resident_bytes()
    assert during - before >= 150 * MB
    del x


def test_peak_sees_a_200mb_tensor_freed_inside_the_block_and_stops_its_thread() -> None:
    with PeakResident() as peak:
        assert _sampler_threads(), "the sampler thread runs during the block"
        x = torch.ones(50_000_000)  # 200 MB
        x.add_(1.0)
        del x
    assert peak.peak_increase_bytes >= 150 * MB
    assert peak.peak_bytes >= peak.start_bytes + 150 * MB
    assert peak.end_bytes < peak.peak_bytes  # freed before exit: the peak is not just the end value
    assert _sampler_threads() == []


def test_thread_stopped_when_the_block_raises() -> None:
    with pytest.raises(KeyError), PeakResident():
        raise KeyError("boom")
    assert _sampler_threads() == []


def test_an_idle_block_shows_no_big_increase() -> None:
    with PeakResident() as peak:
        pass
    assert peak.peak_increase_bytes < 20 * MB


def test_bad_interval_and_reuse_are_rejected() -> None:
    with pytest.raises(ConfigError, match="interval_s must be > 0"):
        PeakResident(interval_s=0)
    peak = PeakResident()
    with peak:
        pass
    with pytest.raises(RuntimeError, match="create a new one"), peak:
        pass


def test_release_freed_hands_back_heap_pages_freed_between_live_tensors() -> None:
    """64 KB tensors come from the C heap; with every 16th kept, freeing the rest frees no whole heap top,
    so the process keeps ~1 GB until the trim."""
    before = resident_bytes()
    tensors = [torch.ones(16_000) for _ in range(16_000)]
    kept = tensors[::16]
    del tensors
    held = resident_bytes() - before
    release_freed()
    after = resident_bytes() - before
    assert held > 0.8e9 and after < held / 4, (held, after)
    assert len(kept) == 1000
