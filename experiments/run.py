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
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import registry
from she_jax.train import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an experiments/*.py config file, optionally `:variant`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<config name>[_<variant>].")


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
    except registry.RunStopped as stop:
        logging.error("%s", stop)
        sys.exit(stop.exit_code)
    except (workdir_lib.WorkdirLocked, workdir_lib.ConfigMismatchError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
