"""Orbax round trips of the train state plus data position, retention and resharding."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from she_jax import parallel
from she_jax.train.checkpoint import TrainCheckpointer
from she_jax.train.state import create_train_state

AXES = {"w": ("embed", "mlp"), "scale": ("embed",)}
RULES = (("embed", "fsdp"), ("mlp", "tensor"))


def _state(mesh, step=0, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(4, 6)).astype(np.float32),
              "scale": rng.normal(size=(4,)).astype(np.float32)}
    state = create_train_state(parallel.shard_params(params, AXES, mesh, RULES),
                               optax.adam(1e-2), jax.random.PRNGKey(seed))
    return state.replace(step=state.step + step)


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_state_data_position_and_target_sharding(tmp_path):
    saved = _state(parallel.make_mesh({"fsdp": 2, "tensor": 2}), step=5, seed=1)
    checkpointer = TrainCheckpointer(str(tmp_path), every=5, keep=2)
    assert checkpointer.save(saved, {"index": 17, "epoch": 2})
    checkpointer.close()
    assert os.path.isdir(tmp_path / "checkpoints" / "5")

    # Restore into a template laid out on a different mesh: arrays take its shardings.
    target_mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    template = _state(target_mesh, seed=2)
    checkpointer = TrainCheckpointer(str(tmp_path), every=5, keep=2)
    assert checkpointer.latest_step() == 5
    restored, position = checkpointer.restore(template)
    checkpointer.close()
    assert position == {"index": 17, "epoch": 2}
    _assert_trees_equal(restored, saved)
    assert int(restored.step) == 5
    assert restored.params["w"].sharding.mesh.shape == target_mesh.shape
    assert restored.params["w"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert restored.opt_state[0].mu["w"].sharding.spec == restored.params["w"].sharding.spec


def test_interval_force_and_keep(tmp_path):
    mesh = parallel.make_mesh({})
    checkpointer = TrainCheckpointer(str(tmp_path), every=2, keep=2)
    saved = [checkpointer.save(_state(mesh, step=s), {"index": s}) for s in (1, 2, 3, 4, 6)]
    assert saved == [False, True, False, True, True]  # only multiples of `every`
    assert checkpointer.save(_state(mesh, step=7), {"index": 7}, force=True)
    assert not checkpointer.save(_state(mesh, step=7), None, force=True)  # already there
    checkpointer.wait()
    assert checkpointer.all_steps() == [6, 7]  # keep=2 newest
    _, position = checkpointer.restore(_state(mesh), step=6)
    checkpointer.close()
    assert position == {"index": 6}


def test_bytes_position_and_missing_checkpoint(tmp_path):
    mesh = parallel.make_mesh({})
    checkpointer = TrainCheckpointer(str(tmp_path), every=1, keep=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpointer.restore(_state(mesh))
    checkpointer.save(_state(mesh, step=1), b'{"grain": 3}\x00')
    _, position = checkpointer.restore(_state(mesh))
    checkpointer.close()
    assert position == b'{"grain": 3}\x00'
    with pytest.raises(ValueError, match="every"):
        TrainCheckpointer(str(tmp_path), every=0, keep=1)


def test_rng_and_step_dtypes_survive(tmp_path):
    state = _state(parallel.make_mesh({}), step=3, seed=4)
    checkpointer = TrainCheckpointer(str(tmp_path), every=3, keep=1)
    checkpointer.save(state, None)
    restored, position = checkpointer.restore(jax.tree.map(jnp.zeros_like, state))
    checkpointer.close()
    assert position is None
    assert restored.rng.dtype == jnp.uint32 and restored.step.dtype == jnp.int32
    np.testing.assert_array_equal(restored.rng, jax.random.PRNGKey(4))
