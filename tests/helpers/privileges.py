"""Running a command where file permissions bite, also as root."""

import os
import shutil
import subprocess
from typing import List

import pytest

CAPS = "-dac_override,-dac_read_search"


def privileges_dropped() -> List[str]:
    """A command prefix under which chmod bites (root without the capabilities that bypass it).

    Root reads a mode-000 file through CAP_DAC_OVERRIDE; ``setpriv`` runs the command
    still as root but without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. Empty when not
    root; skips the test when the capabilities cannot be dropped here.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing to drop privileges")
    probe = subprocess.run([setpriv, f"--inh-caps={CAPS}", f"--bounding-set={CAPS}", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop privileges here: {probe.stderr.strip()}")
    return [setpriv, f"--inh-caps={CAPS}", f"--bounding-set={CAPS}"]
