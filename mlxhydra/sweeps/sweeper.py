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

It also composes each job once, not twice: Hydra's launchers compose every job
again (``load_sweep_config``) right after the sweeper's check composed it. The
sweeper hands its launcher a config loader (:class:`KeptCompositions`) that
gives a launcher in this process the config the check composed for those
overrides (each once; the launcher changes it), so a job's composition (a few
hundred milliseconds of config files) is paid once per job. A launcher that
composes in other processes pickles the loader without the kept configs, and
composes there as before. The config a job gets is the one composed when its
batch was checked: a model directory's ``config.json`` is read then, not when
the job starts.
"""

import logging
import re
from typing import Any, Dict, List, Sequence, Tuple

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from .._upstream import BasicSweeper
from ..config.resolvers import safe_name
from ..errors import MlxhydraError, one_line_message

log = logging.getLogger("mlxhydra")

JOB_ERROR_KEY = "job_error"
# Compositions kept for the launcher at most (a batch of more jobs composes the rest twice).
MAX_KEPT = 256


class KeptCompositions:
    """Hydra's config loader, keeping the configs the sweeper composed for its launcher.

    Every attribute is the wrapped loader's, except ``load_sweep_config``: for the
    master config and overrides of a job the sweeper composed (:meth:`compose_and_keep`),
    it returns that config, once; anything else is composed as usual.
    """

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._kept: Dict[Tuple[int, Tuple[str, ...]], Tuple[Any, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        if name in ("_loader", "_kept"):  # not yet set (while unpickling)
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __getstate__(self) -> Dict[str, Any]:
        return {"_loader": self._loader, "_kept": {}}  # another process composes its own jobs

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    def compose_and_keep(self, master_config: Any, overrides: Sequence[str]) -> Any:
        """Compose one job's config (``load_sweep_config``) and keep it for the launcher."""
        cfg = self._loader.load_sweep_config(master_config, list(overrides))
        if len(self._kept) < MAX_KEPT:
            self._kept[(id(master_config), tuple(overrides))] = (master_config, cfg)
        return cfg

    def forget(self) -> None:
        """Drop what a launcher did not take (a batch's leftovers)."""
        self._kept.clear()

    def load_sweep_config(self, master_config: Any, sweep_overrides: List[str]) -> Any:
        kept = self._kept.pop((id(master_config), tuple(sweep_overrides)), None)
        if kept is not None and kept[0] is master_config:
            return kept[1]
        return self._loader.load_sweep_config(master_config, sweep_overrides)


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
    """BasicSweeper whose jobs fail one by one when their composition fails, composed once each."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.types import HydraContext

        loader = hydra_context.config_loader
        if not isinstance(loader, KeptCompositions):
            hydra_context = HydraContext(config_loader=KeptCompositions(loader),
                                         callbacks=hydra_context.callbacks)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def _composes(self, overrides: Sequence[str]) -> Any:
        loader = self.hydra_context.config_loader
        return loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose each job (kept for the launcher); replace (in ``batch``) each one that fails by
        a job carrying its error."""
        loader = self.hydra_context.config_loader
        keep = isinstance(loader, KeptCompositions)
        if keep:
            loader.forget()
        for index, overrides in enumerate(batch):
            try:
                if keep:
                    loader.compose_and_keep(self.config, overrides)
                else:
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
