"""Stop signals for the training loop: SIGTERM/SIGINT trapped, and one stop decision that
every process agrees on (see ``jaxar.train.loop`` for what the loop then does).

``PREEMPTED_EXIT_CODE`` (75, ``EX_TEMPFAIL``: "temporary failure, run the same command
again") is the exit status of a script whose run was stopped after saving its current step.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75


class Preempted(SystemExit):
    """Raised by ``fit`` after a stop signal, once ``step`` is saved and read back from storage.

    A ``SystemExit`` with code ``PREEMPTED_EXIT_CODE`` (75), so scripts exit with that status.
    """

    def __init__(self, step: int, signal_name: str, directory: Any):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.signal_name, self.directory = step, signal_name, directory

    def __str__(self) -> str:
        return (
            f"{self.signal_name}: checkpoint of step {self.step} is on disk in {self.directory}; "
            f"exiting with status {PREEMPTED_EXIT_CODE}"
        )


def _preemption_service_active() -> bool:
    try:
        from jax._src import distributed

        return distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


class StopSignals:
    """Traps SIGTERM/SIGINT and decides, identically on every process, when to stop."""

    def __init__(self):
        self.received: str | None = None
        self.multi = jax.process_count() > 1
        self.synced = self.multi and _preemption_service_active()
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        self.received = signal.Signals(signum).name
        log.warning("%s received: stopping after the current step", self.received)

    def __enter__(self):
        trapped = () if self.synced else (signal.SIGTERM, signal.SIGINT)
        for signum in trapped:
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: signals cannot be trapped
                break
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def should_stop(self, step: int) -> bool:
        """Whether every process stops after ``step``. Call once per step on every process."""
        if self.synced:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.received = self.received or "SIGTERM"
                return True
            return False
        if not self.multi:
            return self.received is not None
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.received is not None))
        if np.any(flags) and self.received is None:
            self.received = "stop signal on another process"
        return bool(np.any(flags))
