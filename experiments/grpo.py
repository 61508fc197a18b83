r"""GRPO with difficulty-based dynamic sampling (TaoSR1), trainer `grpo`.

  python -m experiments.run --config=experiments/grpo.py            # tiny: builds runs/sft_think first
  python -m experiments.run --config=experiments/grpo.py --config.rl.advantage.scale=none \
      --config.rl.loss.aggregation=constant                          # Dr.GRPO
  python -m experiments.run --config=experiments/grpo.py --config.rl.filter.drop_zero_variance=False
  python -m launch.sweep --config=experiments/grpo.py --out=runs/grpo_sweep   # get_sweep()

Starts from the finished think-first SFT run (config.init_from = 'sft_think'); writes
runs/grpo[_<variant>]/ with metrics.jsonl (reward, accuracy, clip fraction, KL, entropy, ratios, lengths, filter
shares, seconds per phase), samples.jsonl (decoded rollouts and rewards) and eval.json.
"""

from experiments.common import base_config, rl_config


def get_config(arg=None):
    return rl_config("grpo", "grpo", arg)


def get_sweep(arg=None):
    """The standard sweep (launch.sweep without --sweep): the variant's learning rate halved
    and doubled, three seeds each (the project compares settings over >= 3 seeds)."""
    lr = get_config(arg).optimizer.lr
    return {"optimizer.lr": [lr / 2, lr, lr * 2], "seed": [0, 1, 2]}
