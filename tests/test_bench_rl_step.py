"""bench.rl_step: the GRPO-step benchmark runs end to end on a micro model, both sides alike."""

import json

import numpy as np
import pytest

from bench import rl_step
from she_jax.models import transformer

VOCAB = 64


def test_word_tokenizer_maps_each_word_to_its_id():
    tokenizer = rl_step.word_tokenizer(VOCAB)
    ids, texts = rl_step.random_prompts(VOCAB, 3, 9, seed=1)
    assert ids.shape == (3, 9) and len(texts) == 3
    # Prompts avoid pad (0) and EOS (V - 1), and encode back to exactly their ids.
    assert ids.min() >= 1 and ids.max() <= VOCAB - 2
    assert tokenizer(text=texts)["input_ids"] == ids.tolist()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, VOCAB - 1)
    np.testing.assert_array_equal(rl_step.random_prompts(VOCAB, 3, 9, seed=1)[0], ids)


def test_even_token_fraction_counts_valid_tokens_only():
    tokens = np.array([[2, 3, 4, 7], [1, 1, 6, 8]])
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    np.testing.assert_allclose(rl_step.even_token_fraction(tokens, mask), [2 / 3, 0.0])
    assert rl_step.even_token_reward(None, None, [[2, 3], [4, 6, 8]]) == [0.5, 1.0]


def test_bench_config_micro_times_both_sides(capsys):
    model_config = transformer.ModelConfig.preset(
        "tiny", vocab_size=VOCAB, num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1,
        head_dim=16, mlp_dim=64)
    shape = rl_step.StepShape(prompts=2, group=2, prompt_len=8, new_tokens=4, beta=0.02)
    record = rl_step.bench_config("micro", model_config, shape, repeats=1)

    # stdout holds exactly the one JSON line (TRL's own printing is kept off it).
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(line) for line in lines] == [record]
    assert record["bench"] == "rl_step" and record["unit"] == "s/step"
    assert record["ours"] > 0 and record["peer"] > 0
    assert record["ratio"] == pytest.approx(record["peer"] / record["ours"], rel=0.05, abs=0.01)
    assert len(record["ours_times_s"]) == len(record["peer_times_s"]) == 1
    for side in ("ours", "peer"):
        phases = record[f"{side}_phases_median_s"]
        assert set(phases) == set(rl_step.PHASES)
        assert all(seconds > 0 for seconds in phases.values()), (side, phases)
    # Both sides generated exactly new_tokens tokens for every sample, from P-token prompts.
    assert record["ours_completion_tokens"] == [4, 4]
    assert record["peer_completion_tokens"] == [4, 4]
    assert record["peer_prompt_tokens"] == [8, 8]
    assert record["same_model_max_logit_diff"] < 1e-3
    assert len(record["load_average_start"]) == 3


@pytest.mark.parametrize("argv", [["--group=1"], ["--repeats=0"], ["--beta=-0.1"],
                                  ["--beta=,"]])
def test_main_rejects_bad_flags(argv):
    with pytest.raises(SystemExit):
        rl_step.main(argv)
