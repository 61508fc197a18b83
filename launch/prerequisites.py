r"""Builds what a sweep's unfinished trials start from: `python -m launch.prerequisites OUT`.

launch.sweep runs this before it starts trials in parallel, so that two trials never build
the same prerequisite (config.init_from, config.prerequisites) at once. It reads
OUT/sweep.json, builds each trial's config as experiments.run would (the config file, the
fixed overrides, the trial's flags) and calls registry.build_prerequisites on it, one trial
after another: a prerequisite already finished (eval.json) is found, not built again.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Sequence

from experiments import registry
from launch import sweep as sweep_lib


def build_all(sweep_dir: str) -> int:
    """Builds the prerequisites of every unfinished trial of SWEEP_DIR/sweep.json that has
    any, in trial order; the number of trials looked at."""
    path = os.path.join(sweep_dir, sweep_lib.SWEEP_FILE)
    with open(path) as f:
        record = json.load(f)
    trials = [t for t in record["trials"]
              if t["status"] != "finished" and t["needs_prerequisites"]]
    for i, trial in enumerate(trials, 1):
        logging.info("prerequisites of trial %s (%d/%d)", trial["name"], i, len(trials))
        overrides = list(record["fixed"].items()) + list(trial["flags"].items())
        config, _ = sweep_lib.load_trial_config(record["config"], overrides)
        registry.build_prerequisites(config)
    return len(trials)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m launch.prerequisites SWEEP_DIR (got {list(argv[1:])})",
              file=sys.stderr)
        return 2
    # Imported here: experiments.run defines absl flags on the global FLAGS, which importing
    # this module (a test calling build_all) must leave alone.
    from experiments.run import quiet_libraries, use_compilation_cache

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    quiet_libraries()
    use_compilation_cache()
    build_all(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
