r"""The one entry point: `python -m experiments.run --config=experiments/<name>.py[:variant]`.

Dispatches on `config.trainer` to that trainer's `train(config, workdir)`. Configs are
locked, so a typo in `--config.key=value` is an error rather than a silently new key.
A config that names a prerequisite (`config.init_from = 'sft'`) gets it built first, into
its own default workdir, unless that workdir already holds a finished run (`eval.json`).

A run holds its workdir's lock (a second command on it is refused, naming the holder's
pid). A rerun resumes from the checkpoint; a config that differs from the saved
config.json in more than total steps, eval and logging options is refused, unless
`--config.resume_mismatch=allow`. SIGTERM / SIGINT save and stop the whole chain, with
exit code 128 + the signal's number; the same command resumes it.

A run that starts from an SFT run (directly, or through a chain such as SRPO's stages) ends
by printing the two side by side (`--vs_sft`, on by default): per split, macro-F1 and
accuracy of both and the paired difference with its 95 % interval; a run that kept a
dev-selected policy (<workdir>/best, `config.eval.select_every`) gets it as a third column,
with the step it came from and the dev score of every step scored.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import registry
from she_jax import parallel
from she_jax.train import selection, workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an experiments/*.py config file, optionally `:variant`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<config name>[_<variant>].")
_VS_SFT = flags.DEFINE_bool(
    "vs_sft", True, "After a run that starts from an SFT run (directly or through a chain "
    "of stages), print the two side by side: macro-F1 per split and the paired difference "
    "with its 95 % interval (report in <workdir>/vs_sft/). The SFT run is first evaluated "
    "on the splits and examples the final run was, where it was not.")

VS_SFT_DIR = "vs_sft"


def quiet_libraries() -> None:
    """Keeps the console for progress: orbax (absl logger) and jax log every save at INFO."""
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache, shared by every run on this machine (the runs
    of a chain, sweeps, reruns compile the same step, sampler and evaluator programs):
    $JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/she_jax/jit. Keys cover the program,
    the compile options and the jax version, so a stale entry is never reused."""
    import jax

    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "she_jax", "jit")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def sft_root(workdir: str) -> str | None:
    """The SFT run a run started from: its init_dir chain followed up to the first run
    whose trainer is `sft` (None if the chain has none, or `workdir` is one itself)."""
    seen = {os.path.realpath(workdir)}
    current = workdir
    while True:
        with open(os.path.join(current, "config.json")) as f:
            parent = json.load(f).get("init_dir") or ""
        if not parent or os.path.realpath(parent) in seen:
            return None
        seen.add(os.path.realpath(parent))
        path = os.path.join(parent, "config.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            if json.load(f).get("trainer") == "sft":
                return parent
        current = parent


def print_vs_sft(workdir: str, n_resamples: int = 1000) -> dict | None:
    """Prints the finished run beside the SFT run it started from (`--vs_sft`) and writes
    the paired report to <workdir>/vs_sft/; returns the report (None when there is no SFT
    start or no evaluation to compare). A run that kept a dev-selected policy
    (<workdir>/best, eval.select_every) has it printed as a third column, with its step."""
    from she_jax.eval import compare
    from she_jax.eval.reeval import reevaluate, splits_to_evaluate

    final_eval = os.path.join(workdir, "eval.json")
    root = sft_root(workdir) if os.path.isfile(final_eval) else None
    if root is None or not os.path.isfile(os.path.join(root, "eval.json")):
        return None
    with open(final_eval) as f:
        final = json.load(f)
    want = list(final.get("splits") or {})
    if not want:
        return None
    final_max = ((final.get("config") or {}).get("eval") or {}).get("max_examples", 0)
    todo = splits_to_evaluate(root, want, final_max)
    if todo is not None:
        print(f"evaluating the SFT start {root} on {', '.join(todo)} "
              f"({'all' if not final_max else final_max} examples each) to compare",
              flush=True)
        reevaluate(root, splits=todo, max_examples=final_max)
    with open(os.path.join(workdir, "config.json")) as f:
        name = json.load(f).get("name") or "final"
    name = name if name != "sft" else "final"
    runs = [f"sft={root}", f"{name}={workdir}"]
    kept = selection.read_selection(workdir)
    selected = None
    if kept is not None:
        best_dir, selected = kept
        runs.append(f"{name}_best={best_dir}")
    report = compare.build_report(runs, out_dir=os.path.join(workdir, VS_SFT_DIR),
                                  baseline="sft", n_resamples=n_resamples, metrics_keys=())
    print(format_vs_sft(report, name, root, workdir, selected), flush=True)
    return report


def format_vs_sft(report: dict, name: str, root: str, workdir: str,
                  selected: dict | None = None) -> str:
    """The side-by-side table of `print_vs_sft` (macro-F1 and accuracy in %): the SFT start,
    the run's last policy and, with `selected` (best/selection.json), its dev-selected one."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    columns = [(name, "last")] + ([(f"{name}_best", "best")] if selected is not None else [])
    rows = [f"SFT start ({root}) and {name} ({workdir}), macro-F1 and accuracy in %; "
            "difference paired on the same examples, 95 % bootstrap interval:"]
    if selected is not None:
        steps = ", ".join(f"{h['step']}: {100 * h['value']:.1f}" for h in selected["history"])
        rows.append(f"{name}_best = {workdir}/{selection.BEST_DIR}, the policy of step "
                    f"{selected['step']}, chosen on {selected['n']} {selected['split']} "
                    f"examples by macro-F1 (step: value  {steps}); {name} = the last "
                    "update's policy")
    rows.append(f"{'split':<17} {'n':>5} {'SFT F1':>7}"
                + "".join(f" {kind + ' F1':>7} {'diff [95% CI]':>22}" for _, kind in columns)
                + f" {'SFT acc':>8}" + "".join(f" {kind + ' acc':>8}" for _, kind in columns))
    for split, cells in report["splits"].items():
        if "sft" not in cells or any(each not in cells for each, _ in columns):
            continue
        paired_split = report["paired"].get(split) or {}
        n = (paired_split.get(name) or {}).get("n_examples", cells[name]["n_examples"])
        row = f"{split:<17} {n:>5} {pct(cells['sft']['metrics']['macro_f1']['mean']):>7}"
        for each, _ in columns:
            d = ((paired_split.get(each) or {}).get("metrics") or {}).get("macro_f1") or {}
            diff = ("-" if d.get("diff") is None else
                    f"{100 * d['diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]")
            row += f" {pct(cells[each]['metrics']['macro_f1']['mean']):>7} {diff:>22}"
        row += f" {pct(cells['sft']['metrics']['accuracy']['mean']):>8}" + "".join(
            f" {pct(cells[each]['metrics']['accuracy']['mean']):>8}" for each, _ in columns)
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    quiet_libraries()
    use_compilation_cache()
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=experiments/sft.py")
    workdir = _WORKDIR.value or registry.default_workdir(config)
    try:
        registry.run_with_prerequisites(config, workdir)
        if _VS_SFT.value and parallel.is_main_process():
            print_vs_sft(workdir)
    except registry.RunStopped as stop:
        logging.error("%s", stop)
        sys.exit(stop.exit_code)
    except (workdir_lib.WorkdirLocked, workdir_lib.ConfigMismatchError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
