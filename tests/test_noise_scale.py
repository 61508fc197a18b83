"""she_jax.eval.noise_scale: the gradient noise scale from runs at two batch sizes."""

import json
import math
import os

import numpy as np
import pytest

from she_jax.eval import noise_scale


def _write_run(path, batch, norms, lr=0.0):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"optimizer": {"lr": lr}, "rl": {"prompts_per_step": batch}}, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step, norm in enumerate(norms, 1):
            f.write(json.dumps({"step": step, "grad_norm": float(norm), "loss": 0.1}) + "\n")
            f.write(json.dumps({"step": step, "rollout/accuracy": 0.5}) + "\n")  # no grad_norm
    return str(path)


def _sampled_norms(rng, signal, noise_std, batch, steps):
    """Norms of means of `batch` per-group gradients in 50 dimensions: g = G + noise / sqrt(B)."""
    dim = signal.size
    noise = rng.normal(scale=noise_std, size=(steps, batch, dim)).mean(axis=1)
    return np.linalg.norm(signal[None] + noise, axis=1)


def test_recovers_signal_and_noise_of_simulated_gradients(tmp_path, capsys):
    rng = np.random.default_rng(0)
    signal = np.full(50, 0.02)  # |G|^2 = 0.02
    noise_std = 0.2  # tr(Sigma) = 50 * 0.04 = 2.0, so B_simple = 100
    small = _write_run(tmp_path / "b8", 8, _sampled_norms(rng, signal, noise_std, 8, 400))
    large = _write_run(tmp_path / "b64", 64, _sampled_norms(rng, signal, noise_std, 64, 400))
    out = tmp_path / "ns.json"
    assert noise_scale.main([small, large, f"--out={out}", "--n_resamples=500"]) == 0
    result = json.loads(out.read_text())
    assert result["trace_sigma"] == pytest.approx(2.0, rel=0.15)
    assert result["signal_sq_norm"] == pytest.approx(0.02, rel=0.35)
    lo, hi = result["b_simple_ci"]
    assert lo < 100 < hi and lo > 40 and hi < 400, (lo, hi)
    assert result["trace_sigma_ci"][0] < 2.0 < result["trace_sigma_ci"][1]
    # The signal share of an update at B is B / (B + B_simple): small at 8, larger at 64.
    shares = [r["signal_share"] for r in result["runs"]]
    assert shares[0] < 0.15 < 0.25 < shares[1] < 0.6, shares
    for run in result["runs"]:
        assert run["signal_share"] <= run["signal_share_max"] == pytest.approx(
            run["batch"] / (run["batch"] + lo))
    assert [r["steps"] for r in result["runs"]] == [400, 400]  # rows without grad_norm skipped
    printed = capsys.readouterr().out
    assert "B_simple" in printed and "| 8 |" in printed and "| 64 |" in printed


def test_pure_noise_gives_an_infinite_noise_scale():
    rng = np.random.default_rng(1)
    zero = np.zeros(50)
    runs = [(8, _sampled_norms(rng, zero, 0.2, 8, 300) ** 2),
            (32, _sampled_norms(rng, zero, 0.2, 32, 300) ** 2)]
    result = noise_scale.estimate(runs, n_resamples=300)
    # |G|^2 is estimated near 0; the upper end of B_simple's interval is unbounded.
    assert abs(result["signal_sq_norm"]) < 0.01
    assert math.isinf(result["b_simple_ci"][1])
    # The share is about 0 at the point estimate; its upper end stays below 1.
    for run in result["runs"]:
        assert run["signal_share"] < 0.2 and run["signal_share"] <= run["signal_share_max"] < 1
    assert noise_scale.estimate([(8, np.full(5, 0.5)), (32, np.full(5, 0.125))],
                                n_resamples=50)["runs"][0]["signal_share"] < 1e-9  # |G|^2 = 0


def test_fit_is_exact_for_two_batch_sizes():
    signal, trace = noise_scale.fit([8, 32], [0.01 + 2.0 / 8, 0.01 + 2.0 / 32])
    assert signal == pytest.approx(0.01) and trace == pytest.approx(2.0)
    assert noise_scale.b_simple(signal, trace) == pytest.approx(200.0)
    assert math.isinf(noise_scale.b_simple(-0.001, 2.0))


def test_bad_runs_are_named(tmp_path, capsys):
    moving = _write_run(tmp_path / "moving", 8, [0.5, 0.6, 0.4], lr=2e-5)
    fixed = _write_run(tmp_path / "fixed", 8, [0.5, 0.6, 0.4])
    assert noise_scale.main([moving, fixed]) == 2
    err = capsys.readouterr().err
    assert "moving/config.json" in err and "optimizer.lr = 2e-05" in err
    # One batch size cannot separate signal from noise.
    assert noise_scale.main([fixed, fixed]) == 2
    assert "two or more batch sizes" in capsys.readouterr().err
    # --allow_moving accepts a training run (the estimate then mixes policies).
    other = _write_run(tmp_path / "b32", 32, [0.3, 0.31, 0.29])
    out = tmp_path / "moving.json"
    assert noise_scale.main([moving, other, "--allow_moving", "--n_resamples=100",
                             f"--out={out}"]) == 0
    written = json.loads(out.read_text())  # strict JSON; an infinite scale would be null
    assert written["inputs"] == [moving, other] and "b_simple" in written
    with pytest.raises(noise_scale.NoiseScaleError, match="config.json"):
        noise_scale.read_run(str(tmp_path / "nothing"))
    short = _write_run(tmp_path / "short", 8, [0.5])
    with pytest.raises(noise_scale.NoiseScaleError, match="need at least 2"):
        noise_scale.read_run(short)
