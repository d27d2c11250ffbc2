"""Logging filters used by the job's logging config (conf/hydra/job_logging/mlxhydra.yaml)."""

import logging


class NotFileOnly(logging.Filter):
    """Drops records logged with ``extra={"file_only": True}`` (for the console handler).

    ``task=generate`` streams its text to stdout and logs the same text for
    the log file: on the console it would be printed twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)
