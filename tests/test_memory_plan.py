"""bench.memory: ahead-of-time memory plans on the 8-device CPU mesh, on a small model
(vocab 8,192) so each compile takes seconds: the chunked RL loss never holds the
[rows, completion, V] logits, the layer extrapolation matches a full compile, and the
command prints one JSON line per plan."""

import functools
import json

import jax
import jax.numpy as jnp
import pytest

from bench import memory

SMALL = dict(vocab_size=8192, hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1,
             head_dim=16, mlp_dim=64, qkv_bias=True, tie_embeddings=False, max_seq_len=512)
# 8 rows of 16 prompt + 128 completion tokens: one row per device under fsdp = 8, whose
# completion logits (128 x 8192 float32, 4 MiB) outweigh any other array of the step (the
# gathered [32, 8192] output kernel is 1 MiB).
SHAPES = memory.Shapes(prompts=2, group=4, prompt_len=16, new_tokens=128, sft_batch=8,
                       sft_len=32)
LOGITS_BYTES = 128 * 8192 * 4


@pytest.fixture(autouse=True)
def small_model(monkeypatch):
    monkeypatch.setitem(memory.MODELS, "small-test", SMALL)


@functools.cache
def rl_plan(chunk, layers=None):
    memory.MODELS.setdefault("small-test", SMALL)  # cached across the fixture's patches
    return memory.plan("small-test", "rl_update", "fsdp8", shapes=SHAPES, logprob_chunk=chunk,
                       layers=layers)


def test_chunked_rl_loss_never_materialises_the_completion_logits():
    unchunked, chunked = rl_plan(0), rl_plan(16)
    # Per device, one piece: 1 row x 128 completion positions x V float32.
    assert unchunked["largest_buffer"]["bytes"] == LOGITS_BYTES, unchunked["largest_buffer"]
    assert chunked["largest_buffer"]["bytes"] <= LOGITS_BYTES // 4, chunked["largest_buffer"]
    saved = unchunked["temp_bytes"] - chunked["temp_bytes"]
    assert saved >= LOGITS_BYTES, (unchunked["temp_bytes"], chunked["temp_bytes"])
    # The state is the same program input either way: arguments and donated outputs agree.
    for key in ("argument_bytes", "output_bytes", "alias_bytes"):
        assert chunked[key] == unchunked[key] > 0, key
    assert chunked["alias_bytes"] >= 0.9 * chunked["output_bytes"]  # the state is donated
    assert chunked["extrapolated_from"] is None and chunked["layers"] == 3


def test_layer_extrapolation_matches_the_full_compile():
    full, extrapolated = rl_plan(16), rl_plan(16, layers=(1, 2))
    assert extrapolated["extrapolated_from"] == [1, 2] and extrapolated["layers"] == 3
    for key in ("argument_bytes", "output_bytes", "alias_bytes"):  # params and state: exact
        assert extrapolated[key] == pytest.approx(full[key], rel=1e-3), key
    assert extrapolated["temp_bytes"] == pytest.approx(full["temp_bytes"], rel=0.1)


def test_main_prints_a_json_line_per_plan(capsys):
    args = ["--models=small-test", "--programs=sft,sampler", "--meshes=fsdp4_tensor2",
            "--layers=full", "--dtype=float32", "--prompts=2", "--group=4",
            "--prompt_len=16", "--new_tokens=16", "--sft_batch=8", "--sft_len=32"]
    memory.main(args)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["program"] for r in records] == ["sft", "sampler"]
    for record in records:
        assert record["mesh_shape"] == {"data": 1, "fsdp": 4, "tensor": 2}
        assert record["dtype"] == "float32" and record["fits_80gb"]
        assert record["total_bytes"] == (record["argument_bytes"] + record["output_bytes"]
                                         - record["alias_bytes"] + record["temp_bytes"])
        assert record["temp_bytes"] > 0 and record["largest_buffer"]["bytes"] > 0
    # SFT projects the whole [batch, length, V] per device: 2 rows of 31 positions, the
    # vocabulary split over tensor = 2.
    assert records[0]["largest_buffer"]["bytes"] >= 2 * 31 * 8192 // 2 * 4
    with pytest.raises(ValueError, match="--programs"):
        memory.main(["--models=small-test", "--programs=decode"])


def test_largest_buffer_skips_what_a_fusion_never_materialises():
    x = jax.ShapeDtypeStruct((64, 1024), jnp.float32)
    # exp(x_i * x_j) summed over j: the [64, 1024, 1024] product lives inside one fusion.
    fused = jax.jit(lambda a: jnp.sum(jnp.exp(a[:, :, None] * a[:, None, :]), -1))
    largest = memory.largest_buffer(fused.lower(x).compile().as_text())
    assert largest["bytes"] <= 64 * 1024 * 4, largest
    # A value used twice by an opaque op (a sort) is materialised.
    stored = jax.jit(lambda a: jnp.sort(a[:, :, None] * a[:, None, :], axis=-1)[:, :, 0])
    largest = memory.largest_buffer(stored.lower(x).compile().as_text())
    assert largest["bytes"] == 64 * 1024 * 1024 * 4, largest
