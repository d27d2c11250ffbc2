"""The job pipeline: validate, load, run the task and record it, on its own thread, on every rank."""
