"""Evaluation: metrics over predicted labels, serving-side tiering, and eval.json reports.

- `she_jax.eval.metrics`: confusion matrix, accuracy, per-class and macro F1, step accuracy
  against annotations, discriminative hallucination, calibration (ECE, Brier), GSB.
- `she_jax.eval.deploy`: CumPT tiering of label probabilities (Good / Mid / Bad) and its
  metrics, a β sweep, tier-level GSB.
- `she_jax.eval.report`: one split's eval.json entry from arrays, the eval.json file format,
  text / markdown tables and PNG plots.
- `she_jax.eval.compare`: the cross-run report (`python -m she_jax.eval.compare DIR ...`):
  settings across seeds with bootstrap intervals, paired differences, learning curves;
  `she_jax.eval.runs_index` reads its runs and groups them into settings,
  `she_jax.eval.report_render` renders it (markdown, HTML, plots).
- `she_jax.eval.resampling`: its bootstrap (seeds x examples, stratified by gold label).

All of it is numpy (plus matplotlib for the plots, imported only when plotting), so this
package imports without jax.
"""
