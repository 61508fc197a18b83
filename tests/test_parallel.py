"""Mesh construction and golden sharding specs on the 8-device CPU mesh (MaxText style)."""

import functools
import logging

import jax
from jax.sharding import AxisType, PartitionSpec as P
import ml_collections
import numpy as np
import pytest

from she_jax import models, parallel
from she_jax.train.config import DEFAULT_AXIS_RULES, train_config

RULES = DEFAULT_AXIS_RULES


def test_mesh_shape_resolves_fill_and_rejects_bad_sizes():
    assert parallel.mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, 8) == (8, 1, 1)
    assert parallel.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    assert parallel.mesh_shape({"data": 1, "fsdp": 1, "tensor": 1}, 8) == (1, 1, 1)
    with pytest.raises(ValueError, match="at most one -1"):
        parallel.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        parallel.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="needs 16 devices"):
        parallel.mesh_shape({"data": 4, "fsdp": 4, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        parallel.mesh_shape({"model": 2}, 8)


def test_default_config_gives_one_device_auto_mesh():
    mesh = parallel.make_mesh(train_config().mesh)
    assert mesh.devices.size == 1
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.axis_types == (AxisType.Auto,) * 3


def test_fill_axis_uses_all_devices():
    mesh = parallel.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def _specs(config, mesh_sizes):
    mesh = parallel.make_mesh(mesh_sizes)
    axes = models.param_logical_axes(config)
    shapes = jax.eval_shape(functools.partial(models.init_params, config), jax.random.key(0))
    shardings = parallel.logical_to_sharding(axes, mesh, RULES, shapes=shapes)
    return jax.tree.map(lambda s: s.spec, shardings)["params"]


def test_golden_param_specs_on_2x2x2_mesh():
    specs = _specs(models.ModelConfig.preset("tiny"), {"data": 2, "fsdp": 2, "tensor": 2})
    layer = specs["layers_0"]
    assert specs["embed"]["embedding"] == P("tensor", "fsdp")  # [V, E]
    assert layer["attn"]["q_proj"]["kernel"] == P("fsdp", "tensor", None)  # [E, H, D]
    assert layer["attn"]["q_proj"]["bias"] == P("tensor", None)  # [H, D]
    assert layer["attn"]["k_proj"]["kernel"] == P("fsdp", "tensor", None)  # [E, KVH, D]
    assert layer["attn"]["o_proj"]["kernel"] == P("tensor", None, "fsdp")  # [H, D, E]
    assert layer["mlp"]["gate_proj"]["kernel"] == P("fsdp", "tensor")  # [E, M]
    assert layer["mlp"]["down_proj"]["kernel"] == P("tensor", "fsdp")  # [M, E]
    assert layer["input_norm"]["scale"] == P("fsdp")  # [E]
    assert specs["final_norm"]["scale"] == P("fsdp")


def test_golden_param_specs_pure_data_parallel():
    specs = _specs(models.ModelConfig.preset("tiny"), {"data": 8})
    # Rules still name the size-1 axes; splitting over them is a no-op, every device has all.
    assert specs["embed"]["embedding"] == P("tensor", "fsdp")
    mesh = parallel.make_mesh({"data": 8})
    sharding = jax.sharding.NamedSharding(mesh, specs["embed"]["embedding"])
    assert sharding.shard_shape((4096, 128)) == (4096, 128)


def test_non_divisible_dim_is_replicated_with_warning(caplog):
    # 2 kv heads cannot split 4 ways over 'tensor': that dim falls back to replication.
    config = models.ModelConfig.preset("tiny")
    with caplog.at_level(logging.WARNING):
        specs = _specs(config, {"data": 1, "fsdp": 2, "tensor": 4})
    assert specs["layers_0"]["attn"]["k_proj"]["kernel"] == P("fsdp", None, None)
    assert specs["layers_0"]["attn"]["q_proj"]["kernel"] == P("fsdp", "tensor", None)
    assert any("k_proj" in r.message and "replicating" in r.message for r in caplog.records)


def test_spec_rules_multi_axis_reuse_and_errors():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # 'embed' -> fsdp is already used by 'batch' in the same array, so it is not reused.
    assert parallel.logical_to_spec(("batch", "length", "embed"), RULES) == \
        P(("data", "fsdp"), None, None)
    assert parallel.logical_to_spec(("batch", "length", "embed"), RULES, (8, 4, 6), mesh) == \
        P(("data", "fsdp"), None, None)
    with pytest.raises(ValueError, match="'embd' has no rule"):
        parallel.logical_to_spec(("embd",), RULES)
    with pytest.raises(ValueError, match="do not match its shape"):
        parallel.logical_to_spec(("embed",), RULES, (2, 2), mesh)
    with pytest.raises(ValueError, match="does not have"):
        parallel.logical_to_spec(("embed",), [("embed", "model")], (4,), mesh)


def test_shard_params_places_shards():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = {"w": np.arange(8 * 6, dtype=np.float32).reshape(8, 6)}
    placed = parallel.shard_params(params, {"w": ("vocab", "embed")}, mesh, RULES)
    assert placed["w"].sharding.spec == P("tensor", "fsdp")
    assert placed["w"].addressable_shards[0].data.shape == (4, 3)
    np.testing.assert_array_equal(np.asarray(placed["w"]), params["w"])


def test_batch_sharding_splits_leading_dim_over_data_and_fsdp():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert parallel.batch_sharding(mesh).spec == P(("data", "fsdp"))
    batch = {"tokens": np.arange(8 * 3, dtype=np.int32).reshape(8, 3)}
    placed = parallel.shard_batch(batch, mesh)
    assert placed["tokens"].sharding.shard_shape((8, 3)) == (2, 3)
    np.testing.assert_array_equal(np.asarray(placed["tokens"]), batch["tokens"])
    with pytest.raises(ValueError, match="leading batch dim"):
        parallel.shard_batch({"x": np.float32(1.0)}, mesh)


TIMEOUTS = dict(initialization_timeout=300, heartbeat_timeout_seconds=100,
                shutdown_timeout_seconds=300)


@pytest.fixture
def distributed_env(monkeypatch):
    """No launcher's variables in the environment; jax.distributed.initialize recorded."""
    for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(parallel, "_use_gloo_on_cpu", lambda: calls.append("gloo"))
    return calls


def test_initialize_distributed_only_when_enabled(distributed_env):
    config = train_config()
    parallel.initialize_distributed(config.distributed)
    assert distributed_env == []
    config.distributed.enabled = True
    config.distributed.coordinator_address = "10.0.0.1:1234"
    config.distributed.num_processes = 4
    config.distributed.process_id = 3
    config.distributed.heartbeat_timeout = 7
    parallel.initialize_distributed(config.distributed)
    # All three given: used as they are, jax's cluster detection off; timeouts passed on.
    assert distributed_env == ["gloo", dict(
        coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3,
        cluster_detection_method="deactivate", **{**TIMEOUTS, "heartbeat_timeout_seconds": 7})]


def test_distributed_settings_config_then_environment_then_auto(distributed_env, monkeypatch):
    dist = train_config().distributed
    # Nothing known: every value left to jax's auto-detection (TPU, SLURM, MPI).
    assert parallel.distributed_settings(dist) == dict(
        coordinator_address=None, num_processes=None, process_id=None, **TIMEOUTS)
    monkeypatch.setenv(parallel.ENV_COORDINATOR, "127.0.0.1:999")
    monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(parallel.ENV_PROCESS_ID, "1")
    settings = parallel.distributed_settings(dist)
    assert (settings["coordinator_address"], settings["num_processes"],
            settings["process_id"], settings["cluster_detection_method"]) == (
        "127.0.0.1:999", 2, 1, "deactivate")
    dist.process_id = 0  # the config wins over the environment
    assert parallel.distributed_settings(dist)["process_id"] == 0
    dist.process_id = 2
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        parallel.distributed_settings(dist)
    monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        parallel.distributed_settings(train_config().distributed)


def test_initialize_distributed_names_what_is_missing(distributed_env, monkeypatch):
    def no_cluster(**kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    dist = train_config().distributed
    dist.enabled = True
    dist.num_processes = 2
    with pytest.raises(RuntimeError, match=r"not auto-detected: coordinator_address "
                       r"\(--config.distributed.coordinator_address or \$JAX_COORDINATOR_"
                       r"ADDRESS\), process_id"):
        parallel.initialize_distributed(dist)


def test_process_rows_and_host_copy_in_one_process():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert parallel.process_batch_rows(mesh, 8) == slice(0, 8)
    with pytest.raises(ValueError, match="6 rows does not split over the 4 devices"):
        parallel.process_batch_rows(mesh, 6)
    x = parallel.shard_batch({"x": np.arange(16.0).reshape(8, 2)}, mesh)["x"]
    copy = parallel.host_copy({"x": x, "y": 3})
    assert isinstance(copy["x"], np.ndarray) and copy["y"] == 3
    np.testing.assert_array_equal(copy["x"], np.arange(16.0).reshape(8, 2))
    assert parallel.is_main_process()


def test_train_config_mesh_and_rules_cover_model_axes():
    config = train_config()
    assert isinstance(config, ml_collections.ConfigDict)
    names = {name for axes in jax.tree.leaves(
        models.param_logical_axes(models.ModelConfig.preset("tiny", qk_norm=True)),
        is_leaf=lambda x: isinstance(x, tuple)) for name in axes}
    assert names <= {name for name, _ in config.axis_rules}
