"""Resident memory of this process, measured: the current resident set size (RSS) and its peak
during a block of code.

    with PeakResident() as peak:
        run_something()
    print(peak.peak_increase_bytes)   # how far RSS rose above where it started

The peak is sampled by a daemon thread (every `interval_s`, 5 ms by default), so an allocation that
lives shorter than the interval can be missed; the samples taken at entry and exit are always
counted. What is measured is what the kernel holds for this process (every thread, every library,
torch's allocator caches included), not what Python or torch think they allocated: that is what decides
whether a run fits in a machine's memory. The sampler needs the GIL between samples; torch releases it
inside its operators, and pure-Python code yields it every `sys.getswitchinterval()` (5 ms by default).

Sources, first that works: `/proc/self/statm` (Linux), `psutil` if installed, else
`resource.getrusage` — which gives the process's lifetime peak rather than its current RSS, so on
such a platform `peak_increase_bytes` only shows a rise above the lifetime peak so far.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from types import TracebackType

from quant.errors import ConfigError

_STATM = "/proc/self/statm"


def _from_statm() -> int:
    with open(_STATM, "rb") as f:
        # statm: size resident shared text lib data dt, in pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _from_psutil() -> int:
    import psutil  # optional dependency; only reached where /proc is missing

    return int(psutil.Process().memory_info().rss)


def _from_getrusage() -> int:
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


def _pick_reader() -> Callable[[], int]:
    for reader in (_from_statm, _from_psutil):
        try:
            reader()
        except (OSError, ImportError, ValueError, IndexError):
            continue
        return reader
    return _from_getrusage


_read: Callable[[], int] = _pick_reader()


def resident_bytes() -> int:
    """This process's resident set size now, in bytes (see the module docstring for the sources)."""
    return _read()


def release_freed() -> None:
    """Hand back to the OS what Python and torch have freed: a collection (pipelines hold reference
    cycles), then glibc's `malloc_trim`, which returns free heap pages between live allocations, pages
    a process otherwise keeps (after the plan of an SD1.5-size study, bench/scale.py's process held
    1.4 GB more than the plan's loaded model with only `gc.collect()`). A no-op for the trim where the
    C library is not glibc."""
    import ctypes
    import gc
    from contextlib import suppress

    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakResident:
    """Context manager: the peak resident set size of this process while the block runs.

    Attributes, valid after the block (and `peak_bytes`, read live, during it):
    `start_bytes` (RSS at entry), `peak_bytes` (highest RSS sampled, entry and exit included),
    `end_bytes` (RSS at exit) and the property `peak_increase_bytes` (`peak_bytes - start_bytes`).
    One instance measures one block; instances may nest (each runs its own sampler thread), and the
    sampler thread is stopped and joined on exit, also when the block raises.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        if not interval_s > 0:
            raise ConfigError(f"PeakResident interval_s must be > 0 seconds, got {interval_s!r}")
        self.interval_s = interval_s
        self.start_bytes = 0
        self.peak_bytes = 0
        self.end_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_increase_bytes(self) -> int:
        """How far RSS rose above its value at entry (0 if it never did)."""
        return max(0, self.peak_bytes - self.start_bytes)

    def _sample(self) -> None:
        now = resident_bytes()
        if now > self.peak_bytes:
            self.peak_bytes = now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakResident:
        if self._thread is not None:
            raise RuntimeError("a PeakResident measures one block; create a new one for another block")
        self.start_bytes = self.peak_bytes = resident_bytes()
        self._thread = threading.Thread(target=self._loop, name="PeakResident", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.end_bytes = resident_bytes()

    def __repr__(self) -> str:
        mib = 1 << 20
        return (f"PeakResident(start={self.start_bytes / mib:.1f} MiB, peak={self.peak_bytes / mib:.1f} MiB, "
                f"increase={self.peak_increase_bytes / mib:.1f} MiB)")
