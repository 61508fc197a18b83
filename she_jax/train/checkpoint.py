"""Orbax checkpoints of the train state together with the data position.

Layout: <workdir>/checkpoints/<step>/{state, data}: `state` is the TrainState (arrays,
written by every process for its own shards), `data` is JSON with the data iterator's
position, so a resumed run continues with the exact next batch (MaxText style).
"""

import base64
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from she_jax.train.state import TrainState


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _encode_position(position: Any) -> dict:
    # grain's DataLoader iterators report their position as bytes; JSON needs text.
    if isinstance(position, bytes):
        return {"bytes_b64": base64.b64encode(position).decode("ascii")}
    return {"value": position}


def _decode_position(stored: dict) -> Any:
    if "bytes_b64" in stored:
        return base64.b64decode(stored["bytes_b64"])
    return stored["value"]


class TrainCheckpointer:
    """Saves every `every` steps (keeping the newest `keep`) and restores the latest.

    Saves are asynchronous: `save` returns once the arrays are copied off the devices
    (so the next step may donate them) and the files are written in the background;
    `close` waits for them.
    """

    def __init__(self, workdir: str, every: int, keep: int):
        if every <= 0 or keep <= 0:
            raise ValueError(f"checkpoint: every ({every}) and keep ({keep}) must be >= 1")
        self.directory = checkpoint_dir(workdir)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                # Only multiples of `every` (orbax's default policy would also save step 1);
                # preemption is handled by the train loop's own signal handler.
                save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            ),
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, state: TrainState, data_position: Any = None, force: bool = False) -> bool:
        """Saves at step `state.step` if it is a save step (or `force`); returns whether it did.

        `data_position`: the data iterator's state (JSON-serializable, or bytes).
        """
        step = int(jax.device_get(state.step))
        if force and step in self._manager.all_steps():
            return False  # already saved at this step (e.g. interval save, then final save)
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(_encode_position(data_position)),
            ),
            force=force,
        )

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, Any]:
        """Restores (state, data_position) at `step` (default: latest).

        `template`: a TrainState of arrays or ShapeDtypeStructs whose shapes, dtypes and
        shardings the restored arrays take, so a checkpoint written on one mesh loads onto
        another.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], _decode_position(restored["data"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
