"""RL machinery: rollouts, advantages, losses, dynamic sampling and replay.

Each piece is a pure, separately tested function; the trainers in she_jax.train compose them.
"""
