"""Installing and restoring signal handlers around a piece of work (the train loop's
stop-after-this-step, a sweep's forwarding to its trials)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def install(signals: Iterable[int], handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Sets `handler` for `signals` (only the main thread may); returns the previous ones
    for `restore`."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    return previous


def restore(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
