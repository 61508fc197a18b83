"""The train state: everything a run needs to continue bit-for-bit from a checkpoint."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step: int32 [] optimizer updates done; params; opt_state; rng: uint32 [2] base key.

    The per-update key is fold_in(rng, step), so `rng` itself never changes and a resumed
    run draws the same randomness as an uninterrupted one. It is a raw uint32 key (not a
    typed key array) so the checkpointer stores it as an ordinary array.
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    rng: jax.Array


def _replicated_like(params: Any) -> jax.sharding.Sharding:
    leaf = jax.tree.leaves(params)[0]
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """Builds the state at step 0 with the optimizer state laid out like `params`.

    If `params` are already sharded (she_jax.parallel.shard_params), each optimizer moment
    gets its parameter's sharding and is created in place by a jitted init, so no device
    ever holds a full unsharded copy; scalars (step, counts, rng) are replicated.
    `rng`: a raw uint32 [2] key (jax.random.PRNGKey) or a typed key (converted).
    """
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    replicated = _replicated_like(params)
    param_sharding = jax.tree.map(
        lambda x: x.sharding if isinstance(x, jax.Array) else replicated, params)
    abstract_opt_state = jax.eval_shape(tx.init, params)
    opt_sharding = optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_opt_state, param_sharding,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )
    opt_state = jax.jit(tx.init, out_shardings=opt_sharding)(params)
    return TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
        params=params,
        opt_state=opt_state,
        rng=jax.device_put(jnp.asarray(rng, jnp.uint32), replicated),
    )


def state_sharding(state: TrainState) -> TrainState:
    """The sharding of every leaf of `state` (a TrainState of Shardings), for jit/restore."""
    return jax.tree.map(lambda x: x.sharding, state)
