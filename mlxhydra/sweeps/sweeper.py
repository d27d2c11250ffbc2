"""The sweeper of mlxhydra's multiruns: a job whose composition fails is that job's failure.

Hydra's BasicSweeper composes every job of a batch before launching any
(``validate_batch_is_legal``), so one job that cannot be composed (an option
missing from a group for that job only, ``task.temperature`` overridden for a
task that has none) ended the whole sweep before anything ran. This sweeper
is the BasicSweeper with one change: such a job is replaced, in its batch, by
the largest leading choice of its own overrides that composes plus
``+job_error='...'``, the one-line reason. The job then runs through the
normal path and fails in the validate stage with that reason (recorded as a
failed job in its run.json), every other job runs, and the sweep exits 1 at
the end as for any failed job. Works with every launcher: the batch itself
carries the error.
"""

import logging
import re
from typing import Any, List, Sequence

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from .._upstream import BasicSweeper
from ..config.resolvers import safe_name
from ..errors import MlxhydraError, one_line_message

log = logging.getLogger("mlxhydra")

JOB_ERROR_KEY = "job_error"


def _override_value(text: str) -> str:
    """``text`` as a quoted override value that Hydra and OmegaConf keep literal."""
    # A quoted override value still resolves ${...} and treats backslashes before quotes as
    # escapes: the few characters that could change the text are replaced.
    text = text.replace("\\", "/").replace("'", '"')
    return "'" + re.sub(r"\$\{", "$ {", text) + "'"


def _reason(overrides: Sequence[str], error: BaseException) -> str:
    """One line: the job's overrides and why they cannot be composed (no search path listing)."""
    text = one_line_message(error).split("Config search path:")[0]
    return f"the overrides {' '.join(overrides)} cannot be composed: {' '.join(text.split())}"


class JobByJobSweeper(BasicSweeper):
    """BasicSweeper whose jobs fail one by one when their composition fails."""

    def _composes(self, overrides: Sequence[str]) -> Any:
        loader = self.hydra_context.config_loader
        return loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose each job; replace (in ``batch``) each one that fails by a job carrying its error."""
        for index, overrides in enumerate(batch):
            try:
                self._composes(overrides)
            except (HydraException, OmegaConfBaseException, MlxhydraError, ValueError) as e:
                reason = _reason(overrides, e)
                log.error("job %d: %s", index, reason)
                kept: List[str] = []
                for override in overrides:
                    try:
                        self._composes([*kept, override])
                    except (HydraException, OmegaConfBaseException, MlxhydraError, ValueError):
                        continue
                    kept.append(override)
                # The job's folder is still named after the overrides the user gave it.
                subdir = "${hydra.job.num}_" + safe_name(",".join(overrides))
                batch[index] = [*kept, f"hydra.sweep.subdir='{subdir}'",  # type: ignore[index]
                                f"+{JOB_ERROR_KEY}={_override_value(reason)}"]
