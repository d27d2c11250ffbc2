"""Hugging Face Hub ids as models: ``org/name`` and ``org/name@REVISION``.

An id is resolved exactly as ``mlx_lm.load`` resolves it: mlx-lm's own
download function (huggingface_hub's ``snapshot_download`` with mlx-lm's allow
patterns, so ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and
huggingface_hub's progress bars behave as they do for mlx-lm). A local
directory of the same relative name always wins.

Hydra imports this module at start-up (through the model config source), so
it imports only the standard library; huggingface_hub and mlx-lm are imported
when an id is actually resolved.
"""

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import HubError

# A Hub repo id as huggingface_hub accepts it: "owner/name", letters, digits, "-", "_", ".".
_REPO_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a snapshot folder's name: the commit's hash
_CLI = "hf download"

_lock = threading.Lock()
# (repo id, revision, cache dir, offline) -> snapshot: one resolution per process, so that the
# jobs of a sweep (composed one after the other) all get the same commit of a branch.
_resolved: Dict[Tuple[Any, ...], "HubSnapshot"] = {}


@dataclass(frozen=True)
class HubSnapshot:
    """A resolved Hub id: the repo, the revision asked for, the commit and the local snapshot."""

    repo_id: str
    revision: Optional[str]  # as requested (None: the default branch)
    commit: Optional[str]  # None only outside huggingface_hub's cache layout (ModelScope)
    path: Path

    def record(self) -> Dict[str, Any]:
        """The run.json entry (see ``mlxhydra.record.schema.HubRecord``)."""
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit,
                "snapshot": str(self.path)}


def split_hub_id(value: Any) -> Optional[Tuple[str, Optional[str]]]:
    """``(repo_id, revision)`` when ``value`` has the shape of a Hub id, else None.

    ``org/name`` has no revision; ``org/name@REV`` names a branch, tag or
    commit (a branch may contain ``/``: ``org/name@refs/pr/1``). In a Hydra
    defaults list ``@`` selects a package, so there the revision is written
    ``org/name:REV`` (git forbids ``:`` in branch and tag names).
    """
    if not isinstance(value, str):
        return None
    repo_id, sep, revision = value.partition("@")
    if not sep:
        repo_id, sep, revision = value.partition(":")
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        return None
    if repo_id.endswith((".", "-")):
        return None
    return repo_id, (revision if sep else None)  # "org/name@": an empty revision, refused when resolved


# What `git check-ref-format` refuses in a branch or tag name, besides control characters.
_REF_FORBIDDEN = " ~^:?*[\\"


def revision_problem(revision: str) -> Optional[str]:
    """Why git would refuse ``revision`` as a branch or tag name, or None.

    git's ref-name rules (``git check-ref-format --allow-onelevel``): no empty
    name or path component, no ``..``, ``@{``, ``\\``, space, ``~^:?*[`` or
    control character, no component starting with ``.`` or ending with
    ``.lock``, no ``/`` or ``.`` at the end, not ``@`` alone. A commit hash
    passes them too. huggingface_hub looks a branch or tag up as the file
    ``refs/<revision>`` of its cache: these rules keep that file inside ``refs/``.
    """
    if not revision:
        return "is empty"
    if revision == "@":
        return "is '@'"
    for ch in revision:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"contains the control character {ch!r}"
        if ch in _REF_FORBIDDEN:
            return f"contains {ch!r}"
    for part in ("..", "@{", "//"):
        if part in revision:
            return f"contains {part!r}"
    if revision.startswith("/") or revision.endswith("/"):
        return "starts or ends with '/'"
    if revision.endswith("."):
        return "ends with '.'"
    for component in revision.split("/"):
        if component.startswith("."):
            return f"has a component starting with '.' ({component!r})"
        if component.endswith(".lock"):
            return f"has a component ending with '.lock' ({component!r})"
    return None


def is_hub_id(value: Any, cwd: Optional[str] = None) -> bool:
    """True when ``value`` reads as a Hub id and no local file or directory has that name.

    Args:
        cwd: Directory that the local name is taken from (the working directory by default).
    """
    if split_hub_id(value) is None:
        return False
    return not (Path(cwd or os.getcwd()) / os.path.expanduser(value)).exists()


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _download_hint(repo_id: str, revision: Optional[str]) -> str:
    return f"`{_CLI} {repo_id}" + (f" --revision {revision}" if revision else "") + "`"


def describe_failure(key: str, value: str, error: BaseException) -> str:
    """One line naming the id, what went wrong and what to do.

    Args:
        key: The setting that holds the id (``model``, ``task.draft_model``...).
        value: The id as given.
        error: What huggingface_hub (through mlx-lm) raised.
    """
    from huggingface_hub import errors

    repo_id, revision = split_hub_id(value) or (value, None)
    local = Path(os.getcwd()) / value
    where = f"{key}={value}: no local directory {local}, and"
    shown_revision = f" revision '{revision}'" if revision else ""
    if isinstance(error, errors.GatedRepoError):
        return (f"{where} the Hugging Face repo {repo_id} is gated: accept its terms at "
                f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN)")
    if isinstance(error, errors.RevisionNotFoundError):
        return (f"{key}={value}: the Hugging Face repo {repo_id} has no{shown_revision} "
                "(expected a branch, tag or commit hash)")
    if isinstance(error, errors.RepositoryNotFoundError):
        return (f"{where} the Hugging Face Hub has no repo {repo_id} (or it is private: "
                "log in with `hf auth login` or set HF_TOKEN)")
    if isinstance(error, errors.IncompleteSnapshotError):
        return (f"{key}={value}: the cached snapshot of {repo_id} is incomplete and the Hub "
                f"cannot be reached: download it again with {_download_hint(repo_id, revision)}")
    if isinstance(error, errors.LocalEntryNotFoundError):
        if _offline():
            return (f"{where} {repo_id}{shown_revision} is not in the Hugging Face cache "
                    f"{_cache_dir()} (offline: HF_HUB_OFFLINE is set); download it with "
                    f"{_download_hint(repo_id, revision)} or unset HF_HUB_OFFLINE")
        return (f"{where} the Hugging Face Hub cannot be reached and {repo_id}{shown_revision} "
                f"is not in the cache {_cache_dir()}; check the connection or download it with "
                f"{_download_hint(repo_id, revision)}")
    if isinstance(error, errors.HFValidationError):
        return f"{key}={value}: not a Hugging Face repo id ({' '.join(str(error).split())})"
    detail = " ".join(str(error).split()) or type(error).__name__
    return (f"{key}={value}: cannot download {repo_id}{shown_revision} from the Hugging Face "
            f"Hub: {detail}")


def resolve_hub_id(value: str, key: str = "model") -> HubSnapshot:
    """Find (downloading when needed) the local snapshot of a Hub id, as ``mlx_lm.load`` does.

    Args:
        value: ``org/name`` or ``org/name@REVISION``.
        key: The setting that holds it, for messages.

    Returns:
        The snapshot; resolved once per process for the same id, cache and offline mode.

    Raises:
        HubError: one line naming the id and what to do (offline and not cached,
            gated repo, no such repo or revision, no connection).
    """
    parts = split_hub_id(value)
    if parts is None:
        raise HubError(f"{key}={value}: expected a Hugging Face repo id 'org/name' or "
                       "'org/name@REVISION'")
    repo_id, revision = parts
    why = revision_problem(revision) if revision is not None else None
    if why:
        raise HubError(f"{key}={value}: the revision {revision!r} {why}; expected a branch, tag or "
                       "commit hash (git's ref-name rules: git check-ref-format)")
    memo = (repo_id, revision, _cache_dir(), _offline(), os.getenv("MLXLM_USE_MODELSCOPE"))
    with _lock:
        if memo in _resolved:
            return _resolved[memo]
    from .._upstream import download_model

    try:
        path = Path(download_model(repo_id, revision=revision))
    except Exception as e:  # huggingface_hub raises many kinds; each becomes one line
        raise HubError(describe_failure(key, value, e)) from e
    if os.getenv("MLXLM_USE_MODELSCOPE", "false").lower() == "true":
        commit = None  # ModelScope's own layout
    else:
        commit = _snapshot_commit(key, value, repo_id, revision, path)
    snapshot = HubSnapshot(repo_id, revision, commit, path)
    with _lock:
        _resolved[memo] = snapshot
    return snapshot


def _snapshot_commit(key: str, value: str, repo_id: str, revision: Optional[str], path: Path) -> str:
    """The commit of a snapshot huggingface_hub returned: ``<repo folder>/snapshots/<40 hex>``.

    Offline, huggingface_hub takes the commit from the cache's ``refs/<revision>``
    file as it is: an empty or damaged file would make another folder (the
    ``snapshots/`` folder itself) pass for the model.

    Raises:
        HubError: the path is not a snapshot of a commit, naming the refs file.
    """
    from huggingface_hub.file_download import repo_folder_name

    repo = Path(_cache_dir()) / repo_folder_name(repo_id=repo_id, repo_type="model")
    if path.parent == repo / "snapshots" and _COMMIT.match(path.name):
        return path.name
    ref = repo / "refs" / (revision or "main")
    try:
        held = f"holds {ref.read_text()[:80]!r}" if ref.is_file() else "is missing"
    except (OSError, UnicodeDecodeError) as e:
        held = f"cannot be read ({e})"
    raise HubError(f"{key}={value}: the Hugging Face cache resolved {repo_id} to {path}, not a "
                   f"snapshot of a commit: {ref} {held} (expected a 40-hex commit hash); download it "
                   f"again with {_download_hint(repo_id, revision)}")


def pinned(record: Dict[str, Any]) -> Optional[str]:
    """``org/name@COMMIT`` for a recorded resolution (None without a commit)."""
    if not isinstance(record, dict) or not record.get("commit") or not record.get("repo_id"):
        return None
    return f"{record['repo_id']}@{record['commit']}"
