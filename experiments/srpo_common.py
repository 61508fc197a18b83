"""The SRPO stage configs' shared part (experiments/srpo_stage{1,2,3}.py)."""

import ml_collections

from experiments.common import rl_config
from she_jax.rl.curriculum import curriculum_section
from she_jax.train.srpo import srpo_section

HEAD_TYPES = ("category", "attribute", "brand")
ALL_TYPES = HEAD_TYPES + ("negation", "alternative", "qa", "knowledge")


def srpo_stage_config(stage: int, arg: str | None) -> ml_collections.ConfigDict:
    c = rl_config(f"srpo_stage{stage}", "srpo", arg)
    c.init_from = "sft_think" if stage == 1 else f"srpo_stage{stage - 1}"
    c.prerequisites = ml_collections.ConfigDict(
        {"genrm": "srpo.genrm_dir", "sft_think": "curriculum.difficulty_dir"})
    c.srpo = srpo_section()
    # Step rewards from the offline verifier: at tiny scale it beat the reward-model and
    # hybrid sources on every split (README, "Results"), and the chain then needs no reward
    # model run. Prompts without step annotations (verifier/coverage in the metrics) then
    # get the outcome advantage only. The paper's hybrid, the reward model scoring the
    # unannotated ones: --config.srpo.step_reward.source=hybrid (builds genrm.py first).
    c.srpo.step_reward.source = "verifier"
    c.curriculum = curriculum_section(stage)
    # Step-level advantages with critical-step prioritization and the outcome added.
    c.rl.advantage.mode = "per_step"
    c.rl.advantage.critical = True
    c.rl.advantage.outcome_weight = 1.0
    c.rl.advantage.step_weight = 0.5
    c.rl.loss.entropy_coef = 0.01  # entropy regularization against collapse
    c.rl.filter.diversity_weight = 1.0  # diversified data filtering
    c.rl.filter.type_balance = 0.5
    c.rl.filter.label_balance = 0.5
    # Checkpoint selection on dev: every stage scores its start and every 30 updates on 500
    # dev examples, keeps the best as <run>/best (a later policy only when it is better with
    # a paired 95 % interval above 0), and the next stage starts from it; stage 3's best is
    # the chain's result (`experiments.run` prints it beside SFT and the last policy).
    c.eval.select_every = 30
    c.eval.select_examples = 500
    c.eval.select_significant = True
    if stage > 1:
        c.init_checkpoint = "best"
    if stage == 1:  # easy prompts of the common query types
        c.curriculum.pass_rate_band = (0.5, 1.0)
        c.curriculum.query_types = HEAD_TYPES
    elif stage == 2:  # medium prompts, every type
        c.curriculum.pass_rate_band = (0.25, 1.0)
        c.curriculum.query_types = ALL_TYPES
    else:  # the hard end: every type, low pass rates
        c.curriculum.pass_rate_band = (0.0, 0.75)
        c.curriculum.query_types = ALL_TYPES
    if stage < 3:
        c.eval.splits = ("dev",)  # intermediate stages: a quick check; stage 3 evaluates all
        c.optimizer.total_steps = 30  # the warm-up stages are half as long as the last
    return c
