"""Small helpers shared by the benchmarks: JSON-line output, timing, a matmul-rate probe.

Benchmarks on shared machines are noisy, so they time ours and the peer *interleaved*
(`interleaved_times`) and report medians; `matmul_gflops` records how fast the machine was
during the run, so numbers from different runs can be put side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# What `--precision` may list. 'bfloat16' is she_jax's `ModelConfig.dtype='bfloat16'` (bf16
# matmul operands, f32 accumulation, f32 params and optimizer state) against PyTorch under
# `torch.autocast('cpu', dtype=torch.bfloat16)` (f32 params, bf16 matmuls), its peer.
PRECISIONS = ("float32", "bfloat16")


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


def parse_precisions(text: str) -> list[str]:
    """'float32,bfloat16' -> ['float32', 'bfloat16'] (each of PRECISIONS at most once)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in PRECISIONS for name in names) or len(set(names)) < len(names):
        raise ValueError(f"--precision must list some of {PRECISIONS} once each, "
                         f"comma-separated; got {text!r}")
    return names


def peer_autocast(precision: str) -> contextlib.AbstractContextManager:
    """The context the PyTorch peer computes in at `precision`: nothing for float32,
    `torch.autocast('cpu', dtype=torch.bfloat16)` for bfloat16."""
    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def matmul_probe(size: int, precision: str = "float32") -> Callable[[], Any]:
    """A jitted [size, size] @ [size, size] call, warmed up, that blocks until done: float32,
    or (bfloat16) bf16 operands with float32 accumulation, as the model's matmuls."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), jnp.float32)
    if precision == "float32":
        matmul = jax.jit(lambda x: x @ x)
    else:
        a = a.astype(jnp.bfloat16)
        matmul = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=jnp.float32))
    matmul(a).block_until_ready()
    return lambda: matmul(a).block_until_ready()


def matmul_gflops(size: int = 512, repeats: int = 20, precision: str = "float32") -> float:
    """jax matmul throughput on the default device right now, in GFLOP/s (`matmul_probe`).

    A [size, size] @ [size, size] product, best of `repeats` after one warm-up call.
    """
    matmul = matmul_probe(size, precision)
    best = min(timed(matmul) for _ in range(repeats))
    return 2 * size**3 / best / 1e9
