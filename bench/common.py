"""Small helpers shared by the benchmarks: JSON-line output, timing, a matmul-rate probe.

Benchmarks on shared machines are noisy, so they time ours and the peer *interleaved*
(`interleaved_times`) and report medians; `matmul_gflops` records how fast the machine was
during the run, so numbers from different runs can be put side by side.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def emit(record: Mapping[str, Any]) -> None:
    """Prints `record` as one JSON line on stdout (flushed, so partial runs keep results)."""
    print(json.dumps(record, sort_keys=False), flush=True)


def log(message: str) -> None:
    """Progress text on stderr, so stdout stays pure JSON lines."""
    print(message, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call; fn must block until its results are ready."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(fns: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Times each fn `repeats` times, alternating between them (a, b, a, b, ...).

    Alternation spreads background load from other processes over all contenders instead
    of penalising whichever ran during a busy spell. Returns seconds per call, by name.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def matmul_gflops(size: int = 512, repeats: int = 20) -> float:
    """jax float32 matmul throughput on the default device right now, in GFLOP/s.

    A [size, size] @ [size, size] product, best of `repeats` after one warm-up call.
    """
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = min(timed(lambda: matmul(a).block_until_ready()) for _ in range(repeats))
    return 2 * size**3 / best / 1e9
