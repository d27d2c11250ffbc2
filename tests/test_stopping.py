"""SIGTERM while a task that honours stop requests runs: the job's thread gets the grace period to
end cleanly (task=lora's checkpoint) before the interruption is recorded; no longer."""

import os
import signal
import time

import pytest

from mlxhydra import stopping
from mlxhydra.errors import Interrupted
from mlxhydra.job.thread import abandoned, interruption_handlers, run_in_job_thread


def honouring_job(events, work_seconds):
    def job():
        with stopping.honoured():
            os.kill(os.getpid(), signal.SIGTERM)  # handled on the main thread, which is waiting
            while not stopping.requested():
                time.sleep(0.01)
            time.sleep(work_seconds)  # the checkpoint
            events.append("ended cleanly")
            raise Interrupted(signal.SIGTERM)
    return job


def test_sigterm_waits_for_a_task_that_honours_stop_requests():
    events = []
    with interruption_handlers(), pytest.raises(Interrupted) as e:
        run_in_job_thread(honouring_job(events, 0.3))
    assert e.value.signum == signal.SIGTERM
    assert events == ["ended cleanly"] and not abandoned() and not stopping.requested()


def test_sigterm_waits_no_longer_than_the_grace_period(monkeypatch):
    monkeypatch.setattr(stopping, "GRACE_SECONDS", 0.2)
    events = []
    start = time.monotonic()
    with interruption_handlers(), pytest.raises(Interrupted):
        run_in_job_thread(honouring_job(events, 1.0))
    assert time.monotonic() - start < 0.9 and events == [] and abandoned()
    while abandoned():  # let it end before another test uses the job thread
        time.sleep(0.05)
    assert events == ["ended cleanly"]
