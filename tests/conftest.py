"""Test-wide setup: 8 host CPU devices so multi-device code is tested on every machine.

XLA reads XLA_FLAGS once, when jax initialises its backend, so this must run before any
test module imports jax.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Many tests compile the same small programs (a tiny model's step, sampler, scorer) in
# separate processes (pytest-xdist workers, subprocess runs): JAX's persistent compilation
# cache lets the later ones load the executable instead of compiling it again. Keys cover
# the program, compile options and jax version, so a stale entry cannot be reused wrongly.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "she_jax_test_jit_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
