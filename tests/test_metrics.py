"""Run-directory outputs: metrics.jsonl, TensorBoard events, config.json, plots."""

import glob
import json
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from she_jax.train import metrics
from she_jax.train.config import train_config


def _tb_scalars(logdir):
    """{(tag, step): value} from every TFRecord event file under logdir."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4  # length, crc, payload, crc
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_writer_records_jsonl_and_tensorboard(tmp_path):
    workdir = str(tmp_path)
    with metrics.MetricWriter(workdir, total_steps=4, progress=False) as writer:
        writer.write(1, {"loss": 2.5, "eval/accuracy": np.float32(0.25)})
        writer.write(2, {"loss": float("nan")})
    assert metrics.read_metrics(workdir) == [
        {"step": 1, "loss": 2.5, "eval/accuracy": 0.25},
        {"step": 2, "loss": None},  # JSON has no NaN: non-finite values become null
    ]
    scalars = _tb_scalars(os.path.join(workdir, "tb"))
    assert scalars[("loss", 1)] == pytest.approx(2.5)
    assert scalars[("eval/accuracy", 1)] == pytest.approx(0.25)


def test_truncate_then_append_keeps_one_record_per_step(tmp_path):
    workdir = str(tmp_path)
    with metrics.MetricWriter(workdir, total_steps=4, progress=False) as writer:
        for step in (1, 2, 3):
            writer.write(step, {"loss": float(step)})
    metrics.truncate_metrics(workdir, last_step=2)
    with metrics.MetricWriter(workdir, total_steps=4, start_step=2, progress=False) as writer:
        writer.write(3, {"loss": 30.0})
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(workdir)] == [
        (1, 1.0), (2, 2.0), (3, 30.0)]


def test_read_metrics_names_bad_line(tmp_path):
    assert metrics.read_metrics(str(tmp_path)) == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        metrics.read_metrics(str(tmp_path))


def test_write_config_round_trips(tmp_path):
    config = train_config()
    config.optimizer.lr = 3e-4
    path = metrics.write_config(config, str(tmp_path / "run"))
    with open(path) as f:
        written = json.load(f)
    assert written["optimizer"]["lr"] == 3e-4
    assert written["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    assert written["axis_rules"][0] == ["batch", ["data", "fsdp"]]
    assert written["distributed"]["coordinator_address"] is None


def test_plot_metrics_writes_one_png_per_metric(tmp_path):
    workdir = str(tmp_path)
    with metrics.MetricWriter(workdir, total_steps=3, progress=False) as writer:
        for step in (1, 2, 3):
            writer.write(step, {"loss": 1.0 / step, "eval/f1": 0.1 * step})
    paths = metrics.plot_metrics(workdir)
    assert sorted(os.path.basename(p) for p in paths) == ["eval_f1.png", "loss.png"]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
