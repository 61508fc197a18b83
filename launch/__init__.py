"""Launchers around `python -m experiments.run`: flag sweeps (`python -m launch.sweep`)."""
