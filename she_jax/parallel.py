"""Device mesh, logical-axis sharding rules and multi-host start-up.

One mesh with three axes serves every trainer:
  'data'   - pure data parallelism (params replicated),
  'fsdp'   - data parallelism with parameters/optimizer state split (ZeRO-3 style),
  'tensor' - tensor (Megatron) parallelism over the wide model dims.
Models name the axes of their arrays with logical names ('embed', 'vocab', ...); a rules
table (config.axis_rules, see she_jax/train/config.py) maps each logical name to mesh axes.
The same code then runs on 1 CPU device or a pod; only the config changes.

Multi-process: `initialize_distributed` joins the processes; each then passes only its own
rows of a global batch (`process_batch_rows`, `shard_batch`) and gathers what must be
whole on one host (`host_copy`); process 0 alone writes the run directory.

Divisibility: a dim whose size is not divisible by the product of its mesh axes cannot be
split evenly, so it is replicated instead and a warning names the array and dim. This keeps
odd shapes (a 4097-token vocab, 2 kv heads on a 4-way tensor axis) running at the cost of
memory on that array, rather than failing deep inside XLA.
"""

from collections.abc import Callable, Mapping, Sequence
import logging
import math
import os
from typing import Any

import jax
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch's leading dim is split over

# A rules table: (logical name, mesh axis | tuple of mesh axes | None) pairs.
AxisRules = Sequence[tuple[str, str | tuple[str, ...] | None]]


# Environment variables read by `initialize_distributed` when the config leaves a value
# unset (launch/local.py and launch/slurm.sbatch set them); jax itself reads the first.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def distributed_settings(dist: Any) -> dict[str, Any]:
    """The keyword arguments `initialize_distributed` passes to `jax.distributed.initialize`.

    Each of coordinator_address / num_processes / process_id comes from the config when
    set, else from $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES / $JAX_PROCESS_ID. With
    all three known, jax's cluster auto-detection is switched off (the values are used as
    given); otherwise the missing ones are left to it (TPU pods, SLURM, Open MPI).
    """
    def pick(key: str, env: str, parse) -> Any:
        value = dist.get(key, None)
        return value if value is not None else parse(env)

    settings = {
        "coordinator_address": pick("coordinator_address", ENV_COORDINATOR,
                                    lambda env: os.environ.get(env) or None),
        "num_processes": pick("num_processes", ENV_NUM_PROCESSES, _env_int),
        "process_id": pick("process_id", ENV_PROCESS_ID, _env_int),
        "initialization_timeout": int(dist.get("initialization_timeout", 300)),
        "heartbeat_timeout_seconds": int(dist.get("heartbeat_timeout", 100)),
        "shutdown_timeout_seconds": int(dist.get("shutdown_timeout", 300)),
    }
    explicit = [settings[k] for k in ("coordinator_address", "num_processes", "process_id")]
    if None not in explicit:
        if not 0 <= settings["process_id"] < settings["num_processes"]:
            raise ValueError(f"config.distributed: process_id={settings['process_id']} must be "
                             f"in [0, num_processes={settings['num_processes']})")
        settings["cluster_detection_method"] = "deactivate"
    return settings


def initialize_distributed(dist: Any) -> None:
    """Starts jax's multi-process runtime when `dist.enabled` (no-op otherwise, and when it
    is already up: a chain of runs in one process joins once).

    `dist`: the `config.distributed` section (she_jax/train/config.py); values are resolved
    by `distributed_settings` (config, then environment, then jax's auto-detection), with
    its timeouts (initialization, heartbeat: how soon the others stop after one process
    dies, shutdown). Must run before anything touches a jax device. On CPU, collectives
    across processes go through gloo. Raises RuntimeError naming the values it could not
    find and where each can be set.
    """
    if not dist.enabled or jax.distributed.is_initialized():
        return
    settings = distributed_settings(dist)
    _use_gloo_on_cpu()
    try:
        jax.distributed.initialize(**settings)
    except (ValueError, RuntimeError) as e:
        missing = [f"{key} (--config.distributed.{key} or ${env})" for key, env in (
            ("coordinator_address", ENV_COORDINATOR), ("num_processes", ENV_NUM_PROCESSES),
            ("process_id", ENV_PROCESS_ID)) if settings[key] is None]
        hint = (f"; not set and not auto-detected: {', '.join(missing)} (jax detects them "
                "on TPU pods, under SLURM and Open MPI)" if missing else "")
        raise RuntimeError(f"jax.distributed.initialize failed: {e}{hint}") from e
    logging.info(
        "jax.distributed up: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )


def _use_gloo_on_cpu() -> None:
    # CPU processes talk through gloo (the default CPU client has no cross-process
    # collectives); other platforms' clients ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_main_process() -> bool:
    """Process 0: the one that writes the run directory (metrics, eval, plots, export)."""
    return jax.process_index() == 0


def process_batch_rows(mesh: Mesh, global_rows: int) -> slice:
    """The rows of a `[global_rows, ...]` batch that this process's devices hold under
    `batch_sharding(mesh)`: what `shard_batch` expects this process to pass.

    One process: all rows. Several: a contiguous block (devices are laid out process by
    process along the batch axes), the whole batch when the batch axes are replicated
    across processes. Raises ValueError if global_rows does not split evenly over the
    batch axes, or if this process's rows are not one contiguous block.
    """
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if global_rows % ways:
        raise ValueError(f"a batch of {global_rows} rows does not split over the "
                         f"{ways} devices of mesh axes {BATCH_AXES}")
    if jax.process_count() == 1:
        return slice(0, global_rows)
    held = sorted({(index[0].start or 0, index[0].stop or global_rows) for index in
                   batch_sharding(mesh).addressable_devices_indices_map((global_rows,)).values()})
    start, stop = held[0][0], max(stop for _, stop in held)
    covered = sum(b - a for a, b in held)
    if covered != stop - start:
        raise ValueError(f"process {jax.process_index()} holds rows {held} of the batch, not "
                         "one contiguous block; order the mesh's devices process by process")
    return slice(start, stop)


def on_main_process(fn: Callable[[], Any], barrier: str) -> Any:
    """fn() on process 0 (e.g. it writes the run directory) while the others wait at the
    named barrier; returns fn's result there, None on the others. Call on every process."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if is_main_process() else None
    multihost_utils.sync_global_devices(barrier)
    return result


def host_copy(tree: Any) -> Any:
    """A numpy copy of every array of `tree` on this host, gathered from every process when
    an array is split across processes (a collective: call it on every process)."""
    def copy(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(copy, tree)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolves config mesh sizes (-1 = fill the remaining devices) to (data, fsdp, tensor)."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    fills = [i for i, size in enumerate(shape) if size == -1]
    if len(fills) > 1 or any(size == 0 or size < -1 for size in shape):
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: sizes must be >= 1, "
                         "with at most one -1 (fill the remaining devices)")
    fixed = math.prod(size for size in shape if size != -1)
    if fills:
        if num_devices % fixed:
            raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: {num_devices} devices "
                             f"are not divisible by the fixed axes' product {fixed}")
        shape[fills[0]] = num_devices // fixed
    if math.prod(shape) > num_devices:
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} "
                         f"devices; only {num_devices} are available")
    return tuple(shape)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ('data', 'fsdp', 'tensor') mesh from `config.mesh` with Auto axis types.

    Uses the first prod(sizes) devices, so the all-ones default is a 1-device mesh.
    Auto axes let jit propagate shardings from the in/out shardings and the logical
    constraints (jax 0.10's `jax.make_mesh` would default to Explicit axes).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(dict(mesh_config), len(devices))
    n = math.prod(shape)
    if n == len(devices):
        # Topology-aware order (ICI rings on TPU, NVLink islands on GPU).
        device_grid = mesh_utils.create_device_mesh(shape, devices)
    else:
        device_grid = np.array(devices[:n]).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _is_axes_leaf(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: AxisRules,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    name: str = "array",
) -> PartitionSpec:
    """Maps one array's logical axis names to a PartitionSpec.

    A logical name missing from `rules` is an error (it is almost always a typo).
    A mesh axis already used by an earlier dim of the same array is not reused (that dim
    is replicated). With `shape` and `mesh`, a dim not divisible by its mesh axes'
    product is replicated, with a warning.
    """
    table = dict(rules)
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"{name}: logical axes {tuple(logical_axes)} do not match its "
                         f"shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for dim, logical in enumerate(logical_axes):
        if logical is None:
            spec.append(None)
            continue
        if logical not in table:
            raise ValueError(f"{name}: logical axis {logical!r} has no rule in axis_rules "
                             f"(known: {sorted(table)})")
        target = table[logical]
        if target is None:
            mesh_axes = ()
        else:
            mesh_axes = (target,) if isinstance(target, str) else tuple(target)
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        if mesh is not None:
            unknown = [a for a in mesh_axes if a not in mesh.shape]
            if unknown:
                raise ValueError(f"axis_rules map {logical!r} to mesh axes {unknown} that the "
                                 f"mesh {tuple(mesh.shape)} does not have")
        if mesh_axes and shape is not None and mesh is not None:
            ways = math.prod(mesh.shape[a] for a in mesh_axes)
            if shape[dim] % ways:
                logging.warning(
                    "%s: dim %d (%r, size %d) is not divisible by mesh axes %s (%d ways); "
                    "replicating it", name, dim, logical, shape[dim], mesh_axes, ways)
                mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def logical_to_sharding(axes_tree: Any, mesh: Mesh, rules: AxisRules, shapes: Any = None) -> Any:
    """Maps a pytree of logical-axis tuples to a pytree of NamedShardings.

    Args:
      axes_tree: pytree whose leaves are tuples of logical names, e.g. ('vocab', 'embed').
      mesh: the device mesh.
      rules: logical name -> mesh axes table.
      shapes: optional pytree mirroring `axes_tree` with arrays or ShapeDtypeStructs;
        enables the divisibility fallback (non-divisible dims are replicated).
    """
    paths_and_axes, treedef = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=_is_axes_leaf)
    if shapes is None:
        shape_list = [None] * len(paths_and_axes)
    else:
        shape_list = [np.shape(x) for x in treedef.flatten_up_to(shapes)]
    shardings = [
        NamedSharding(mesh, logical_to_spec(axes, rules, shape, mesh, jax.tree_util.keystr(path)))
        for (path, axes), shape in zip(paths_and_axes, shape_list)
    ]
    return jax.tree_util.tree_unflatten(treedef, shardings)


def shard_params(params: Any, axes_tree: Any, mesh: Mesh, rules: AxisRules) -> Any:
    """Places `params` on the mesh by their logical axes (non-divisible dims replicated)."""
    return jax.device_put(params, logical_to_sharding(axes_tree, mesh, rules, shapes=params))


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: leading (example) dim split over ('data', 'fsdp')."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turns host arrays (this process's slice of the batch) into global sharded arrays.

    Every leaf needs a leading batch dim. Single-process, the local slice is the whole
    batch; multi-host, each process passes its own rows and the global batch is their
    concatenation in process order. Leaves that are already global jax Arrays are resharded.
    """
    sharding = batch_sharding(mesh)

    def put(x):
        if isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable):
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("batch leaves need a leading batch dim; got a scalar")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, batch)
