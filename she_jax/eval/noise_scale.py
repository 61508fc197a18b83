r"""The gradient noise scale of an RL update: how much of each step is signal.

    python -m experiments.run --config=experiments/grpo.py --config.init_dir=runs/sft_think_rl \
        --config.optimizer.lr=0 --config.optimizer.total_steps=40 --workdir=runs/noise/b8
    python -m experiments.run --config=experiments/grpo.py --config.init_dir=runs/sft_think_rl \
        --config.optimizer.lr=0 --config.optimizer.total_steps=20 \
        --config.rl.prompts_per_step=32 --workdir=runs/noise/b32
    python -m she_jax.eval.noise_scale runs/noise/b8 runs/noise/b32 [--out=FILE.json]

A policy-gradient update is the mean of B independent prompt groups' gradients, so its
expected squared norm is

    E |g_B|^2 = |G|^2 + tr(Sigma) / B,

|G| the true gradient (the signal), tr(Sigma) the variance of one group's gradient (the
noise). Runs made at learning rate 0 take every step's gradient at the same policy (the
start: Adam moves nothing, and the KL term is 0), so the mean of their logged `grad_norm`^2
estimates E |g_B|^2 at their B (`rl.prompts_per_step`); two or more batch sizes give |G|^2
and tr(Sigma) by least squares on 1 / B (with two, the estimators of McCandlish et al.,
2018, "An Empirical Model of Large-Batch Training", appendix A), and the simple noise
scale B_simple = tr(Sigma) / |G|^2: the batch at which an update is as much signal as
noise. At B far below B_simple an update is mostly noise — and Adam, which normalises the
step's size, takes a full-size step along it. The share of an update's expected squared
norm that is signal is B / (B + B_simple), printed per run with its upper end (B_simple at
the lower end of its interval).

Intervals: 95 % percentile bootstrap over each run's steps, resampled independently per
run (`scipy.stats.bootstrap`). An estimated |G|^2 at or below 0 means the signal is not
distinguishable from 0 at these batch sizes: B_simple is then reported as infinite.
Writes nothing unless --out is given (strict JSON: an infinite value is null); prints a
table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from she_jax.eval.resampling import json_safe
from she_jax.eval.runs_index import _read_metrics as read_metrics


class NoiseScaleError(ValueError):
    """A run that cannot be used, naming it and why."""


def read_run(workdir: str, allow_moving: bool = False) -> tuple[int, np.ndarray]:
    """(B, the squared gradient norms of every logged update) of one RL run."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise NoiseScaleError(f"{workdir}: no config.json (not a run directory)")
    with open(path) as f:
        config = json.load(f)
    rl = config.get("rl") or {}
    if "prompts_per_step" not in rl:
        raise NoiseScaleError(f"{path}: no rl.prompts_per_step (not an RL run)")
    batch = int(rl["prompts_per_step"])
    lr = float((config.get("optimizer") or {}).get("lr", float("nan")))
    if lr != 0.0 and not allow_moving:
        raise NoiseScaleError(
            f"{path}: optimizer.lr = {lr}: the estimate needs every gradient taken at one "
            "policy (make the run with --config.optimizer.lr=0; --allow_moving uses it anyway)")
    norms = [row["grad_norm"] for row in read_metrics(workdir) if "grad_norm" in row]
    if len(norms) < 2:
        raise NoiseScaleError(f"{workdir}/metrics.jsonl: {len(norms)} logged grad_norm values; "
                              "need at least 2")
    norms = np.asarray(norms, np.float64)
    if not np.isfinite(norms).all():
        raise NoiseScaleError(f"{workdir}/metrics.jsonl: non-finite grad_norm")
    return batch, norms ** 2


def fit(batches: Sequence[int], mean_sq) -> tuple:
    """(|G|^2, tr(Sigma)) from the mean squared norms at each batch size (last axis of
    `mean_sq`, any leading axes): least squares of mean_sq = |G|^2 + tr(Sigma) / B (exact
    for two batch sizes)."""
    x = 1.0 / np.asarray(batches, np.float64)
    xc = x - x.mean()
    mean_sq = np.asarray(mean_sq, np.float64)
    trace = (mean_sq - mean_sq.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)
    return mean_sq.mean(axis=-1) - trace * x.mean(), trace


def b_simple(signal: float, trace: float) -> float:
    return float(trace / signal) if signal > 0 else math.inf


def estimate(runs: Sequence[tuple[int, np.ndarray]], n_resamples: int = 2000,
             seed: int = 0) -> dict:
    """The noise scale from runs at >= 2 batch sizes, with percentile bootstrap intervals."""
    batches = [b for b, _ in runs]
    if len(set(batches)) < 2:
        raise NoiseScaleError(f"need runs at two or more batch sizes (rl.prompts_per_step), "
                              f"got {sorted(set(batches))}")
    samples = [sq for _, sq in runs]
    signal, trace = (float(v) for v in fit(batches, [s.mean() for s in samples]))

    def stat(*resampled, axis=-1):
        return np.stack(fit(batches, np.stack([np.mean(r, axis=axis) for r in resampled],
                                              axis=-1)), axis=0)

    boot = stats.bootstrap(samples, stat, n_resamples=n_resamples, method="percentile",
                           vectorized=True, random_state=np.random.default_rng(seed))
    resampled = boot.bootstrap_distribution  # [2, n_resamples]
    scales = np.full(resampled.shape[1], np.inf)  # |G|^2 <= 0: no finite scale
    np.divide(resampled[1], resampled[0], out=scales, where=resampled[0] > 0)
    # No interpolation between resamples: some may be infinite (|G|^2 <= 0).
    lo, hi = (float(v) for v in np.quantile(scales, [0.025, 0.975], method="inverted_cdf"))
    scale = b_simple(signal, trace)
    per_run = []
    for b, sq in runs:
        per_run.append({
            "batch": b, "steps": int(sq.size), "mean_sq_norm": float(sq.mean()),
            "sem_sq_norm": float(sq.std(ddof=1) / math.sqrt(sq.size)),
            "signal_share": (float(b / (b + scale)) if math.isfinite(scale) else 0.0),
            # the upper end, from B_simple's lower end (its interval is over resamples)
            "signal_share_max": float(b / (b + lo)) if lo > 0 else 1.0})
    return {
        "signal_sq_norm": signal, "trace_sigma": trace,
        "signal_sq_norm_ci": [float(v) for v in boot.confidence_interval.low[:1]]
        + [float(v) for v in boot.confidence_interval.high[:1]],
        "trace_sigma_ci": [float(boot.confidence_interval.low[1]),
                           float(boot.confidence_interval.high[1])],
        "b_simple": scale, "b_simple_ci": [lo, hi], "runs": per_run,
        "n_resamples": n_resamples,
    }


def render(result: Mapping, names: Sequence[str]) -> str:
    def num(v):
        return "inf" if not math.isfinite(v) else f"{v:.4g}"

    lines = ["| run | B (prompt groups) | steps | mean grad_norm^2 | signal share of an update "
             "(95 % upper end) |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, run in zip(names, result["runs"]):
        lines.append(f"| {name} | {run['batch']} | {run['steps']} | "
                     f"{run['mean_sq_norm']:.4g} +- {run['sem_sq_norm']:.2g} | "
                     f"{100 * run['signal_share']:.0f} % ({100 * run['signal_share_max']:.0f} %) |")
    lo, hi = result["b_simple_ci"]
    lines += ["", f"|G|^2 (signal) = {num(result['signal_sq_norm'])} "
              f"[{num(result['signal_sq_norm_ci'][0])}, {num(result['signal_sq_norm_ci'][1])}]; "
              f"tr(Sigma) (noise of one group) = {num(result['trace_sigma'])} "
              f"[{num(result['trace_sigma_ci'][0])}, {num(result['trace_sigma_ci'][1])}]",
              f"B_simple = tr(Sigma) / |G|^2 = {num(result['b_simple'])} prompt groups "
              f"[{num(lo)}, {num(hi)}] (95 % bootstrap over steps)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m she_jax.eval.noise_scale",
                                     description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RL run directories made at optimizer.lr=0")
    parser.add_argument("--out", default="", help="write the result as JSON here")
    parser.add_argument("--allow_moving", action="store_true",
                        help="accept runs made at a learning rate above 0")
    parser.add_argument("--n_resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        runs = [read_run(r, args.allow_moving) for r in args.runs]
        result = estimate(runs, n_resamples=args.n_resamples)
    except NoiseScaleError as e:
        print(f"noise_scale: {e}", file=sys.stderr)
        return 2
    result["inputs"] = list(args.runs)
    print(render(result, args.runs))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:  # strict JSON: an infinite scale is written as null
            json.dump(json_safe(result), f, indent=1, allow_nan=False)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
