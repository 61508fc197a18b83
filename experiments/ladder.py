r"""The paper ladder: SFT, DPO, GRPO, SRPO (verifier and hybrid steps) and AGRL from the same
SFT start, with the same budget, over seeds, and one report.

  python -m experiments.ladder --seeds=0,1,2 --world_seed=0 --out=runs/ladder
  python -m experiments.ladder --methods=sft,grpo,srpo --updates=120 --test_size=2000
  python -m experiments.ladder --dry_run                      # the commands, one per line

For every seed s: `experiments/sft_think.py` trains the starting policy into
<out>/sft/seed<s> (seed and data_seed s), then every other method starts from that run
(`--config.init_dir`) with seed s into <out>/<method>/seed<s>. Every RL method gets the same
number of optimizer updates (`--updates`, 8 prompts x 8 samples per update at tiny), DPO
its own config's budget; all are evaluated on the same splits (dev and every test split,
all examples). `--world_seed` and `--test_size` set the ShopWorld seed and the size of each
test split for every run of the ladder (the sft and rl splits do not depend on test_size).
Plain `--config.key=value` flags go to every RL method (not to SFT or DPO): e.g.
`--config.optimizer.lr=2e-5`.

Each method is a sweep over seeds (`launch.sweep`): a rerun skips finished runs and resumes
interrupted ones. The ladder ends with the cross-run report (`she_jax.eval.compare`):
<out>/report.{md,html,json} with paired differences against SFT, and <out>/vs_grpo/ with
them against GRPO.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from launch import sweep as sweep_lib

SFT_CONFIG = "experiments/sft_think.py"
# method -> (config file, fixed overrides of that method). SRPO runs as one stage from the
# SFT start (no curriculum), so that it has the budget of the other methods.
METHODS: dict[str, tuple[str, dict[str, str]]] = {
    "sft": (SFT_CONFIG, {}),
    "dpo": ("experiments/dpo.py", {}),
    "grpo": ("experiments/grpo.py", {}),
    "srpo": ("experiments/srpo_stage3.py", {"curriculum.enabled": "False",
                                             "srpo.step_reward.source": "verifier"}),
    "srpo_hybrid": ("experiments/srpo_stage3.py", {"curriculum.enabled": "False",
                                                    "srpo.step_reward.source": "hybrid"}),
    "agrl": ("experiments/agrl.py", {}),
}
RL_METHODS = ("grpo", "srpo", "srpo_hybrid", "agrl")


def _flag_values() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: each runs every method.", flag_values=fv)
    flags.DEFINE_integer("world_seed", 0, "ShopWorld seed of every run.", flag_values=fv)
    flags.DEFINE_integer("test_size", 0, "Examples per test split (0: the world's own).",
                         flag_values=fv)
    flags.DEFINE_list("methods", list(METHODS), f"Methods, from {list(METHODS)}; sft is "
                      "always run (it is every other method's start).", flag_values=fv)
    flags.DEFINE_integer("updates", 0, "Optimizer updates of every RL method (0: each "
                         "config's own).", flag_values=fv)
    flags.DEFINE_string("variant", "", "Config variant (tiny, small, ...).", flag_values=fv)
    flags.DEFINE_string("out", "runs/ladder", "Ladder directory.", flag_values=fv)
    flags.DEFINE_integer("parallel", 1, "Runs at once within a method.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "Print the commands, one per line; run nothing.",
                      flag_values=fv)
    flags.DEFINE_bool("report", True, "End with the cross-run report.", flag_values=fv)
    return fv


def _config_arg(path: str, variant: str) -> str:
    return f"{path}:{variant}" if variant else path


def plan(methods: Sequence[str], seeds: Sequence[str], out: str, *, world_seed: int = 0,
         test_size: int = 0, updates: int = 0, variant: str = "",
         rl_overrides: Sequence[tuple[str, str]] = ()) -> list[sweep_lib.Sweep]:
    """One validated sweep per method (SFT first); trial `seed<s>` of each in
    <out>/<method>/seed<s>. Raises SweepError naming the key for a bad override."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise sweep_lib.SweepError(f"--methods: unknown {unknown}; known: {list(METHODS)}")
    # Every config evaluates dev and every test split by default; all of their examples.
    data = [("data.world_overrides.seed", str(world_seed)), ("eval.max_examples", "0")]
    if test_size:
        data.append(("data.world_overrides.test_size", str(test_size)))
    sft_dir = os.path.join(out, "sft")
    sweeps = []
    for method in ["sft"] + [m for m in methods if m != "sft"]:
        config_file, own = METHODS[method]
        fixed = data + list(own.items())
        axes: list[tuple[str, list[str]]] = [("seed", list(seeds)), ("data_seed", list(seeds))]
        if method != "sft":
            axes.append(("init_dir", [os.path.join(sft_dir, f"seed{s}") for s in seeds]))
        if method in RL_METHODS:
            if updates:
                fixed.append(("optimizer.total_steps", str(updates)))
            fixed += list(rl_overrides)
        sweep = sweep_lib.plan_sweep(_config_arg(config_file, variant),
                                     os.path.join(out, method), axes, fixed, zip_axes=True)
        sweep.label = method
        for trial, seed in zip(sweep.trials, seeds):  # names by seed alone
            trial.name = f"seed{seed}"
            old = trial.workdir
            trial.workdir = os.path.join(out, method, trial.name)
            trial.command = [f"--workdir={trial.workdir}" if arg == f"--workdir={old}" else arg
                             for arg in trial.command]
        sweeps.append(sweep)
    return sweeps


def run(sweeps: Sequence[sweep_lib.Sweep], out: str, parallel: int = 1,
        report: bool = True) -> int:
    """Runs every method's sweep in order (SFT first: the others start from it), then the
    reports. Returns 0 when every run finished."""
    status = 0
    for sweep in sweeps:
        code = sweep_lib.run_sweep(sweep, parallel=parallel, report=False)
        if code >= 128:  # interrupted: stop the ladder; a rerun resumes it
            return code
        if code and sweep is sweeps[0]:
            print(f"ladder: the SFT start did not finish; see {sweep.path}", file=sys.stderr)
            return code
        status = status or code
    if report:
        from she_jax.eval import compare

        dirs = [s.out for s in sweeps]
        compare.build_report(dirs, out_dir=out, baseline="sft")
        if any(os.path.basename(d) == "grpo" for d in dirs):
            compare.build_report(dirs, out_dir=os.path.join(out, "vs_grpo"), baseline="grpo")
        print(f"ladder report: {os.path.join(out, 'report.md')}", flush=True)
    return status


def main(argv: Sequence[str]) -> int:
    fv = _flag_values()
    rest, fixed = sweep_lib.split_fixed_overrides(argv)
    fv(rest)
    try:
        sweeps = plan(fv.methods, fv.seeds, fv.out, world_seed=fv.world_seed,
                      test_size=fv.test_size, updates=fv.updates, variant=fv.variant,
                      rl_overrides=fixed)
    except sweep_lib.SweepError as e:
        print(f"ladder: {e}", file=sys.stderr)
        return 2
    if fv.dry_run:
        for sweep in sweeps:
            for trial in sweep.trials:
                print(sweep_lib.display_command(trial.command))
        return 0
    return run(sweeps, fv.out, fv.parallel, fv.report)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
