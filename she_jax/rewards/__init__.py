"""Rewards: outcome, offline step verifier, generative step reward model, hybrid, shaping."""
