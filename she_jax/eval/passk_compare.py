r"""Sampled pass@1 and pass@k of several runs against a baseline, paired on the same prompts.

    python -m she_jax.eval.passk --workdir=DIR --splits=dev,test_longtail   # each run first
    python -m she_jax.eval.passk_compare sft=runs/sft_think_rl \
        grpo=runs/ladder_indep/grpo/seed0,runs/ladder_indep/grpo/seed1 [--baseline=sft] \
        [--out=FILE]                       # FILE.md and FILE.json

The greedy evaluation (she_jax.eval.compare) says whether a run's most likely answer moved;
this says whether the distribution RL samples from moved: a run can raise its sampled
accuracy (sharpen) without changing a greedy answer. Each NAME=DIR[,DIR...] is a setting
whose runs (seeds) hold `pass_at_k.json` (she_jax.eval.passk) made with the same k,
temperature and examples. Per split, a prompt's pass@1 is its share of correct samples
(num_correct / k) and its pass@k whether any sample was right; a setting's value per
prompt is the mean over its runs. The difference against the baseline is the mean over
prompts of the per-prompt differences, with a 95 % percentile bootstrap interval over
prompts (`scipy.stats.bootstrap`, paired; prompts are the unit, so seeds are averaged
first). Splits are the ones every run has.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from she_jax.eval.passk import OUTPUT_FILE

CONFIDENCE = 0.95
METRICS = ("pass@1", "pass@k")


def _load(workdir: str) -> dict:
    path = os.path.join(workdir, OUTPUT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no {OUTPUT_FILE} (run python -m she_jax.eval.passk "
                                f"--workdir={workdir} first)")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from e
    for key in ("k", "temperature", "splits"):
        if key not in data:
            raise ValueError(f"{path}: no {key!r} (not a pass_at_k.json)")
    return data


def _parse_setting(arg: str) -> tuple[str, list[str]]:
    name, sep, dirs = arg.partition("=")
    if not sep or not name or not dirs:
        raise ValueError(f"{arg!r}: expected NAME=DIR[,DIR...]")
    return name, [d for d in dirs.split(",") if d]


def per_prompt(runs: Sequence[Mapping], split: str, where: Sequence[str]
               ) -> tuple[list, dict[str, np.ndarray]]:
    """(ids, {metric: [N] per-prompt value averaged over the runs}) of one setting."""
    ids = runs[0]["splits"][split]["ids"]
    values = {m: [] for m in METRICS}
    for run, path in zip(runs, where):
        row = run["splits"][split]
        if row["ids"] != ids:
            raise ValueError(f"{path}: split {split!r} holds other prompts than {where[0]} "
                             f"(pass_at_k.json made with another --max_examples or data?)")
        correct = np.asarray(row["num_correct"], np.float64)
        values["pass@1"].append(correct / run["k"])
        values["pass@k"].append((correct > 0).astype(np.float64))
    return ids, {m: np.mean(v, axis=0) for m, v in values.items()}


def _interval(diff: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    if diff.size < 2 or np.all(diff == diff[0]):
        return float(diff.mean()), float(diff.mean())
    res = stats.bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=CONFIDENCE,
                          method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare(settings: Mapping[str, Sequence[str]], baseline: str | None = None, *,
            n_resamples: int = 4000, seed: int = 0) -> dict:
    """The comparison of settings {name: [run dirs]}; see the module docstring."""
    if len(settings) < 2:
        raise ValueError("need at least two settings (NAME=DIR[,DIR...]) to compare")
    baseline = baseline or next(iter(settings))
    if baseline not in settings:
        raise ValueError(f"--baseline={baseline!r} is not one of the settings "
                         f"{sorted(settings)}")
    loaded = {name: [_load(d) for d in dirs] for name, dirs in settings.items()}
    first_dir = settings[baseline][0]
    reference = loaded[baseline][0]
    for name, runs in loaded.items():
        for run, path in zip(runs, settings[name]):
            for key in ("k", "temperature"):
                if run[key] != reference[key]:
                    raise ValueError(f"{path}: {key}={run[key]} but {first_dir} has "
                                     f"{reference[key]}: samples must be drawn alike")
    splits = [s for s in reference["splits"]
              if all(s in run["splits"] for runs in loaded.values() for run in runs)]
    if not splits:
        raise ValueError("no split is in every run's pass_at_k.json")
    out = {"k": reference["k"], "temperature": reference["temperature"], "baseline": baseline,
           "settings": {n: list(d) for n, d in settings.items()}, "confidence": CONFIDENCE,
           "splits": {}}
    for split in splits:
        per_setting = {name: per_prompt(runs, split, settings[name])
                       for name, runs in loaded.items()}
        ids, base = per_setting[baseline]
        row = {"n": len(ids), "values": {}, "diffs": {}}
        for name, (run_ids, vals) in per_setting.items():
            if run_ids != ids:
                raise ValueError(f"{settings[name][0]}: split {split!r} holds other prompts "
                                 f"than {first_dir}")
            row["values"][name] = {m: float(v.mean()) for m, v in vals.items()}
            if name == baseline:
                continue
            row["diffs"][name] = {}
            for m in METRICS:
                diff = vals[m] - base[m]
                lo, hi = _interval(diff, n_resamples, seed)
                row["diffs"][name][m] = {"diff": float(diff.mean()), "lo": lo, "hi": hi}
        out["splits"][split] = row
    return out


def markdown(result: Mapping) -> str:
    base = result["baseline"]
    others = [n for n in result["settings"] if n != base]
    k = result["k"]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    cell = lambda d: f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"  # noqa: E731
    lines = [f"Sampled answers at temperature {result['temperature']:g}, k = {k} per prompt; "
             f"pass@1 and pass@{k} in %, differences against `{base}` paired on the same "
             f"prompts (mean over each setting's runs), 95 % bootstrap interval over prompts.",
             "",
             "| split | n | " + f"{base} pass@1 | "
             + " | ".join(f"{n} pass@1 | {n} - {base} pass@1 | {n} - {base} pass@{k}"
                          for n in others) + " |",
             "| --- | ---: | ---: |" + " ---: | ---: | ---: |" * len(others)]
    for split, row in result["splits"].items():
        cells = [split, str(row["n"]), pct(row["values"][base]["pass@1"])]
        for n in others:
            cells += [pct(row["values"][n]["pass@1"]), cell(row["diffs"][n]["pass@1"]),
                      cell(row["diffs"][n]["pass@k"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m she_jax.eval.passk_compare",
        description="Sampled pass@1 / pass@k of runs against a baseline, paired on prompts.")
    parser.add_argument("settings", nargs="+", help="NAME=DIR[,DIR...] (runs with "
                        "pass_at_k.json); the first is the baseline unless --baseline")
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    parser.add_argument("--n_resamples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    try:
        settings = dict(_parse_setting(a) for a in args.settings)
        if len(settings) != len(args.settings):
            raise ValueError("a setting name is given twice")
        result = compare(settings, args.baseline, n_resamples=args.n_resamples, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"error: {e}\n")
    text = markdown(result)
    print(text, end="")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".md", "w") as f:
            f.write(text)
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}.md and {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
