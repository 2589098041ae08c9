"""Polling a remote job until it ends, with growing waits and a hard maximum."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from nluflow.backends.base import JobState, JobStatus
from nluflow.backends.http.options import Clock, Sleep
from nluflow.errors import TrainingFailedError

# Polling between status calls (seconds): first wait, growth factor, longest wait.
POLL_FIRST_DELAY = 1.0
POLL_FACTOR = 1.5
POLL_MAX_DELAY = 30.0


@dataclass(frozen=True)
class PollSchedule:
    """Waits between status calls: ``first`` seconds, growing by ``factor`` up to ``longest``."""

    first: float = POLL_FIRST_DELAY
    factor: float = POLL_FACTOR
    longest: float = POLL_MAX_DELAY

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * self.factor, self.longest)


def wait_for_job(
    status: Callable[[], JobStatus],
    *,
    max_wait: float,
    what: str,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    on_progress: Callable[[float, str], None] | None = None,
    schedule: PollSchedule = PollSchedule(),
) -> JobStatus:
    """Poll ``status`` with growing waits until the job ends; return the final status if it succeeded.

    A job that fails or is cancelled, or that has not ended within ``max_wait`` seconds, raises
    ``TrainingFailedError`` with the last state and the platform's reason.
    """
    deadline = clock() + max_wait
    for delay in schedule.delays():
        current = status()
        if on_progress is not None:
            on_progress(current.progress, current.message or current.state.value)
        if current.state is JobState.SUCCEEDED:
            return current
        if current.state.terminal:
            raise TrainingFailedError(
                f"{what} ended {current.state.value}: {current.message or 'no reason given'}; "
                "no model was produced"
            )
        remaining = deadline - clock()
        if remaining <= 0:
            raise TrainingFailedError(
                f"{what} did not finish within {max_wait:.0f} s (last state {current.state.value}, "
                f"{current.progress:.0%}); it was left running on the platform and no model was produced"
            )
        sleep(min(delay, remaining))
    raise AssertionError("unreachable: the schedule never ends")  # pragma: no cover
