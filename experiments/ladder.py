r"""The paper ladder: SFT, DPO, GRPO, SRPO (verifier and hybrid steps) and AGRL from the same
SFT start, with the same budget, over seeds, and one report.

  python -m experiments.ladder --seeds=0,1,2 --world_seed=0 --out=runs/ladder
  python -m experiments.ladder --methods=sft,grpo,srpo --updates=120 --test_size=2000
  python -m experiments.ladder --dry_run                      # the commands, one per line
  python -m experiments.ladder --sft_dir=runs/sft_think_wide --methods=grpo,srpo
  python -m experiments.ladder --sft_config=experiments/sft_think_rl.py --methods=grpo


For every seed s: `experiments/sft_think.py` (or `--sft_config`) trains the starting policy into
<out>/sft/seed<s> (seed and data_seed s), then every other method starts from that run
(`--config.init_dir`) with seed s into <out>/<method>/seed<s>. With `--sft_dir` one finished
SFT run is every seed's start instead (the seeds then vary the RL methods only, and each
method's paired difference is its mean over seeds against that one run). Every RL method
gets the same number of optimizer updates (`--updates`, 8 prompts x 8 samples per update
at tiny), DPO its own config's budget; all are evaluated on the same splits (dev and every
test split, all examples). `--world_seed` and `--test_size` set the ShopWorld seed and the
size of each test split for every run of the ladder (the sft and rl splits do not depend on
test_size).
Plain `--config.key=value` flags go to every RL method (not to SFT or DPO): e.g.
`--config.optimizer.lr=2e-5`.

Each method is a sweep over seeds (`launch.sweep`): a rerun skips finished runs and resumes
interrupted ones. The ladder ends with the cross-run report (`she_jax.eval.compare`):
<out>/report.{md,html,json} with paired differences against SFT, and <out>/vs_grpo/ with
them against GRPO, then <out>/targets.{md,json}: the paper's targets, met or not and by how
much (`experiments.ladder_targets`). RL runs that select on dev
(`--config.eval.select_every=30`) also appear with their selected policies (`<run>/best`)
as the setting `<method>_best`, beside the last policies, and the ladder prints which step
each seed kept.

With `--votes=8` every run (the SFT start too) is also evaluated by sampling: 8 answers
per prompt at temperature 1 (`she_jax.eval.passk`, the first `--votes_examples` of each
split), and two more reports compare the methods on those samples: <out>/votes/ (the label
is the majority vote, self-consistency) and <out>/vote_decision/ (the label decided from
the vote shares with per-label offsets each run fits on its dev votes, `she_jax.eval.decision`;
reported on the test splits). A finished run whose pass_at_k.json already has those votes
is not sampled again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

from absl import flags

from launch import sweep as sweep_lib
from she_jax import cli

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
    flags.DEFINE_string("sft_dir", "", "A finished think-first SFT run: the one start of every "
                        "seed's RL methods (not trained by the ladder; evaluated on every "
                        "split in full first if it was not). Its data section is used for "
                        "every run (--world_seed and --test_size must then be left out).",
                        flag_values=fv)
    flags.DEFINE_string("sft_config", SFT_CONFIG, "The config that trains each seed's start "
                        "(when --sft_dir is not given); experiments/sft_think_rl.py: the "
                        "rl-data start, its whole chain built per seed.", flag_values=fv)
    flags.DEFINE_string("variant", "", "Config variant (tiny, small, ...).", flag_values=fv)
    flags.DEFINE_string("out", "runs/ladder", "Ladder directory.", flag_values=fv)
    flags.DEFINE_integer("parallel", 1, "Runs at once within a method.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "Print the commands, one per line; run nothing.",
                      flag_values=fv)
    flags.DEFINE_bool("report", True, "End with the cross-run report.", flag_values=fv)
    flags.DEFINE_integer("votes", 0, "With the report: also evaluate every run by k sampled "
                         "answers per prompt and report the majority vote and the dev-fitted "
                         "vote decision (0 = off).", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("votes_examples", 500, "Examples per split for --votes (0 = all).",
                         lower_bound=0, flag_values=fv)
    return fv


def _config_arg(path: str, variant: str) -> str:
    return f"{path}:{variant}" if variant else path


def _sft_data_overrides(sft_dir: str) -> list[tuple[str, str]]:
    """The data section of a finished SFT run as overrides (its world and every world
    override it set), so that the RL runs evaluate the same examples."""
    path = os.path.join(sft_dir, "config.json")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(sft_dir, "eval.json"))):
        raise sweep_lib.SweepError(f"--sft_dir={sft_dir}: not a finished run (config.json and "
                                   "eval.json)")
    with open(path) as f:
        data = json.load(f).get("data") or {}
    if data.get("source", "shopworld") != "shopworld":
        raise sweep_lib.SweepError(f"{path}: data.source={data.get('source')!r}; the ladder "
                                   "runs on ShopWorld")
    out = [("data.world", str(data.get("world", "tiny")))]
    for key, value in sorted((data.get("world_overrides") or {}).items()):
        if value is not None:
            out.append((f"data.world_overrides.{key}", repr(value) if isinstance(value, str)
                        else str(value)))
    return out


def plan(methods: Sequence[str], seeds: Sequence[str], out: str, *, world_seed: int = 0,
         test_size: int = 0, updates: int = 0, variant: str = "", sft_dir: str = "",
         rl_overrides: Sequence[tuple[str, str]] = (), sft_config: str = SFT_CONFIG
         ) -> list[sweep_lib.Sweep]:
    """One validated sweep per method (SFT first, unless `sft_dir` gives the one start of
    every seed); trial `seed<s>` of each in <out>/<method>/seed<s>. `sft_config` trains the
    starts (a think-first SFT config; its prerequisites are built per seed by
    experiments.run). Raises SweepError naming the key for a bad override."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise sweep_lib.SweepError(f"--methods: unknown {unknown}; known: {list(METHODS)}")
    if sft_dir and sft_config != SFT_CONFIG:
        raise sweep_lib.SweepError("--sft_config trains the starts; --sft_dir gives one: "
                                   "use one of the two")
    # Every config evaluates dev and every test split by default; all of their examples.
    if sft_dir:
        if world_seed or test_size:
            raise sweep_lib.SweepError("--sft_dir: the runs take its data section; leave out "
                                       "--world_seed and --test_size")
        data = _sft_data_overrides(sft_dir) + [("eval.max_examples", "0")]
    else:
        data = [("data.world_overrides.seed", str(world_seed)), ("eval.max_examples", "0")]
        if test_size:
            data.append(("data.world_overrides.test_size", str(test_size)))
    sft_root = os.path.join(out, "sft")
    starts = ([sft_dir] * len(seeds) if sft_dir
              else [os.path.join(sft_root, f"seed{s}") for s in seeds])
    sweeps = []
    trained = [m for m in methods if m != "sft"]
    for method in (trained if sft_dir else ["sft"] + trained):
        config_file, own = METHODS[method]
        if method == "sft":
            config_file = sft_config
        fixed = data + list(own.items())
        axes: list[tuple[str, list[str]]] = [("seed", list(seeds)), ("data_seed", list(seeds))]
        if method != "sft":
            axes.append(("init_dir", starts))
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


def ensure_full_eval(sft_dir: str) -> None:
    """Evaluates the given SFT start on dev and every test split, all examples, unless its
    eval.json already holds that (its baseline row in the report needs them)."""
    from she_jax.eval import evaluate
    from she_jax.eval.reeval import reevaluate, splits_to_evaluate

    todo = splits_to_evaluate(sft_dir, evaluate.DEFAULT_SPLITS, 0)
    if todo is not None:
        print(f"ladder: evaluating {sft_dir} on every split, all examples", flush=True)
        reevaluate(sft_dir, splits=todo, max_examples=0)


def selected_dirs(sweeps: Sequence[sweep_lib.Sweep]) -> list[str]:
    """`<label>_best=<workdir>/best` (compare's NAME=DIR) for every trial that kept a
    dev-selected policy, and one line per such trial saying which step it kept."""
    from she_jax.train import selection

    named = []
    for sweep in sweeps:
        for trial in sweep.trials:
            kept = selection.read_selection(trial.workdir)
            if kept is None:  # no selection in this run (or not finished)
                continue
            best, chosen = kept
            print(f"ladder: {sweep.label} {os.path.basename(trial.workdir)} kept step "
                  f"{chosen.get('step')} of its dev evaluations", flush=True)
            named.append(f"{sweep.label}_best={best}")
    return named


def ensure_votes(workdir: str, k: int, max_examples: int) -> None:
    """Samples k answers per prompt of every split (she_jax.eval.passk) unless the run's
    pass_at_k.json already has per-example votes of k samples on the same examples."""
    from she_jax.eval import evaluate, passk

    path = os.path.join(workdir, passk.OUTPUT_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            done = json.load(f)
        splits = done.get("splits") or {}
        if (done.get("k") == k and done.get("max_examples") == max_examples
                and done.get("temperature") == 1.0 and done.get("seed") == 0
                and all("votes" in (splits.get(s) or {}) for s in evaluate.DEFAULT_SPLITS)):
            return
    print(f"ladder: sampling {k} answers per prompt of {workdir}", flush=True)
    passk.run_pass_at_k(workdir, k=k, max_examples=max_examples)


def finished_runs(sweeps: Sequence[sweep_lib.Sweep], sft_dir: str = ""
                  ) -> list[tuple[str, str]]:
    """(label, workdir) of the given SFT start (`sft`) and of every evaluated trial."""
    from she_jax.eval.runs_index import is_run_dir

    runs = [("sft", sft_dir)] if sft_dir else []
    for sweep in sweeps:
        runs += [(sweep.label, t.workdir) for t in sweep.trials if is_run_dir(t.workdir)]
    return runs


def vote_dirs(sweeps: Sequence[sweep_lib.Sweep], sft_dir: str = "", fit_split: str = "dev",
              splits: Mapping[str, Sequence[Mapping]] | None = None
              ) -> tuple[list[str], list[str]]:
    """Decides every finished run's label from its sampled votes (she_jax.eval.decision,
    source 'votes') twice: by majority into <run>/vote/, with offsets fitted on `fit_split`
    into <run>/vote_decision/; returns both lists as compare's `<label>=<dir>` (the SFT
    start as `sft`). `splits`: the records the rule flags come from (default: each run's
    own data, read once per run)."""
    from she_jax import run_dir
    from she_jax.data import sources
    from she_jax.eval import decision

    plain, fitted = [], []
    for label, workdir in finished_runs(sweeps, sft_dir):
        records = (splits if splits is not None
                   else sources.load_splits(run_dir.load_config(workdir).data))
        decision.adjust_run(workdir, fit_split, splits=records, source="votes", fit=False)
        d = decision.adjust_run(workdir, fit_split, splits=records, source="votes")
        fit = d["fit_macro_f1"]
        offsets = " ".join(f"{k} {v:+.2f}" for k, v in d["offsets"].items())
        print(f"ladder: {label} {os.path.basename(workdir)} vote offsets {offsets} "
              f"({fit_split} macro-F1 {100 * fit['argmax']:.1f} -> "
              f"{100 * fit['adjusted']:.1f}, in-sample)", flush=True)
        plain.append(f"{label}={os.path.join(workdir, 'vote')}")
        fitted.append(f"{label}={os.path.join(workdir, 'vote_decision')}")
    return plain, fitted


def vote_reports(sweeps: Sequence[sweep_lib.Sweep], out: str, sft_dir: str = "",
                 fit_split: str = "dev",
                 splits: Mapping[str, Sequence[Mapping]] | None = None) -> None:
    """<out>/votes/ (majority vote, every split) and <out>/vote_decision/ (dev-fitted
    offsets on the vote shares, the splits but `fit_split`), each against SFT and, in
    vs_grpo/, against GRPO, from the runs' pass_at_k.json votes."""
    from she_jax.eval import compare, report

    plain, fitted = vote_dirs(sweeps, sft_dir, fit_split, splits)
    for dirs, name in ((plain, "votes"), (fitted, "vote_decision")):
        held = set()
        for named in dirs:
            path = os.path.join(named.split("=", 1)[1], "eval.json")
            held |= set(report.read_eval_json(path)["splits"])
        if name == "vote_decision":
            held.discard(fit_split)
        reported = [s for s in report.SPLIT_ORDER if s in held]
        reported += sorted(held - set(reported))
        target = os.path.join(out, name)
        compare.build_report(dirs, out_dir=target, baseline="sft", splits=reported)
        if any(s.label == "grpo" for s in sweeps):
            compare.build_report(dirs, out_dir=os.path.join(target, "vs_grpo"),
                                 baseline="grpo", splits=reported)
        print(f"ladder report ({name}): {os.path.join(target, 'report.md')}", flush=True)


def run(sweeps: Sequence[sweep_lib.Sweep], out: str, parallel: int = 1,
        report: bool = True, sft_dir: str = "", votes: int = 0,
        votes_examples: int = 500) -> int:
    """Runs every method's sweep in order (SFT first: the others start from it, or from
    `sft_dir`, evaluated in full first), then the reports. Returns 0 when every run
    finished."""
    status = 0
    if sft_dir:
        ensure_full_eval(sft_dir)
    for sweep in sweeps:
        code = sweep_lib.run_sweep(sweep, parallel=parallel, report=False)
        if code >= 128:  # interrupted: stop the ladder; a rerun resumes it
            return code
        if code and sweep is sweeps[0] and not sft_dir:
            print(f"ladder: the SFT start did not finish; see {sweep.path}", file=sys.stderr)
            return code
        status = status or code
    if report:
        from she_jax.eval import compare

        dirs = ([f"sft={sft_dir}"] if sft_dir else []) + [s.out for s in sweeps]
        dirs += selected_dirs(sweeps)
        from experiments import ladder_targets

        reports = [compare.build_report(dirs, out_dir=out, baseline="sft")]
        sources = [os.path.join(out, "report.json")]
        if any(s.label == "grpo" for s in sweeps):
            vs_grpo = os.path.join(out, "vs_grpo")
            reports.append(compare.build_report(dirs, out_dir=vs_grpo, baseline="grpo"))
            sources.append(os.path.join(vs_grpo, "report.json"))
        print(f"ladder report: {os.path.join(out, 'report.md')}", flush=True)
        rows = ladder_targets.write(out, reports, sources)
        print(ladder_targets.render_markdown(rows, sources), end="", flush=True)
        if votes:
            for _, workdir in finished_runs(sweeps, sft_dir):
                ensure_votes(workdir, votes, votes_examples)
            vote_reports(sweeps, out, sft_dir)
    return status


def main(argv: Sequence[str]) -> int:
    fv = _flag_values()
    rest, fixed = sweep_lib.split_fixed_overrides(argv)
    cli.parse_flags(fv, rest, __doc__)
    try:
        sweeps = plan(fv.methods, fv.seeds, fv.out, world_seed=fv.world_seed,
                      test_size=fv.test_size, updates=fv.updates, variant=fv.variant,
                      sft_dir=fv.sft_dir, rl_overrides=fixed, sft_config=fv.sft_config)
    except sweep_lib.SweepError as e:
        print(f"ladder: {e}", file=sys.stderr)
        return 2
    if fv.dry_run:
        for sweep in sweeps:
            for trial in sweep.trials:
                print(sweep_lib.display_command(trial.command))
        return 0
    return run(sweeps, fv.out, fv.parallel, fv.report, fv.sft_dir, fv.votes,
               fv.votes_examples)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
