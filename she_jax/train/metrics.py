"""Run-directory outputs: metrics.jsonl, TensorBoard events, console progress, config, plots.

Only process 0 writes (multi-host runs would otherwise write N copies).
"""

from collections.abc import Callable, Iterable, Mapping
import json
import logging
import math
import os
import re
import sys
from typing import Any

import jax
import tensorboardX
import tqdm

METRICS_FILE = "metrics.jsonl"
CONSOLE_KEYS = ("loss", "grad_norm", "learning_rate")  # shown first on the progress bar


def _is_writer() -> bool:
    return jax.process_index() == 0


def write_config(config: Any, workdir: str) -> str:
    """Writes the resolved ConfigDict (or dict) to <workdir>/config.json; returns the path."""
    path = os.path.join(workdir, "config.json")
    if not _is_writer():
        return path
    os.makedirs(workdir, exist_ok=True)
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    with open(path, "w") as f:
        json.dump(as_dict, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    return path


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The JSON objects of an append-only log, one per line, in file order.

    A last line without its newline that is not valid JSON is a write cut short by a crash
    (every record is written with its newline in one call): it is dropped with a warning,
    and the resumed run writes that record again. Any other bad line is damage of another
    kind and an error naming file and line.
    """
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    unterminated = len(lines) - 1  # the piece after the last newline ('' if none)
    records = []
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if index == unterminated:
                logging.warning("%s:%d: dropping a torn last line (%d bytes, a write cut "
                                "short by a crash): %s", path, index + 1, len(raw), e)
                break
            raise ValueError(f"{path}:{index + 1}: not a JSON object ({e}; the line is "
                             f"{len(raw)} bytes long)") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{index + 1}: not a JSON object")
        records.append(record)
    return records


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of <workdir>/metrics.jsonl in file order ([] if there is none)."""
    path = os.path.join(workdir, METRICS_FILE)
    return read_jsonl(path) if os.path.exists(path) else []


def truncate_jsonl(path: str, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrites an append-only log with only the records `keep` accepts (and without a torn
    last line); returns how many records it dropped. Atomic: a crash during the rewrite
    leaves the old file. Only process 0 writes; a missing file is left missing."""
    if not _is_writer() or not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        before = f.read()
    records = read_jsonl(path)
    kept = [r for r in records if keep(r)]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    if text.encode() == before:
        return 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dropped = len(records) - len(kept)
    if dropped:
        logging.info("%s: dropped %d records written after the checkpoint resumed from",
                     path, dropped)
    return dropped


def truncate_metrics(workdir: str, last_step: int) -> None:
    """Drops records with step > last_step, so a resumed run appends without duplicates."""
    truncate_jsonl(os.path.join(workdir, METRICS_FILE), lambda r: r["step"] <= last_step)


def _to_float(value: Any) -> float:
    return float(jax.device_get(value))


class MetricWriter:
    """Appends one JSON record per logged step to metrics.jsonl, mirrors scalars to
    TensorBoard (<workdir>/tb) and shows a progress bar with ETA (a log line per write
    instead when stderr is not a terminal, e.g. under a cluster scheduler).

    `start_step`: the step the run (re)starts from; TensorBoard events after it from an
    earlier attempt are purged, matching the truncation of metrics.jsonl on resume.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, progress: bool = True):
        self.workdir = workdir
        self._enabled = _is_writer()
        self._tb = None
        self._bar = None
        if not self._enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(os.path.join(workdir, METRICS_FILE), "a")
        self._tb = tensorboardX.SummaryWriter(
            os.path.join(workdir, "tb"), purge_step=start_step + 1 if start_step else None)
        if progress and sys.stderr.isatty():
            self._bar = tqdm.tqdm(total=total_steps, initial=start_step, dynamic_ncols=True,
                                  desc=os.path.basename(os.path.normpath(workdir)))
        self._bar_step = start_step

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Records `metrics` (scalars) at `step`. Non-finite values are written as null."""
        if not self._enabled:
            return
        values = {k: _to_float(v) for k, v in metrics.items()}
        record = {"step": int(step)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in values.items():
            self._tb.add_scalar(key, value, int(step))
        self._tb.flush()
        shown = [k for k in CONSOLE_KEYS if k in values]
        shown += [k for k in values if k not in shown][: max(0, 5 - len(shown))]
        summary = {k: f"{values[k]:.4g}" for k in shown}
        if self._bar is not None:
            self._bar.update(int(step) - self._bar_step)
            self._bar_step = int(step)
            self._bar.set_postfix(summary, refresh=True)
        else:
            logging.info("step %d: %s", step, " ".join(f"{k}={v}" for k, v in summary.items()))

    def close(self) -> None:
        if not self._enabled:
            return
        self._file.close()
        self._tb.close()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def plot_metrics(workdir: str, keys: Iterable[str] | None = None) -> list[str]:
    """Plots each metric against step to <workdir>/plots/<metric>.png; returns the paths.

    `keys`: metrics to plot (default: every numeric metric in metrics.jsonl).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    if keys is None:
        keys = sorted({k for r in records for k, v in r.items()
                       if k != "step" and isinstance(v, (int, float))})
    out_dir = os.path.join(workdir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out_dir, _file_name(key) + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
