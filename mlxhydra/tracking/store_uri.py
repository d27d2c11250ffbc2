"""An MLflow store's URI: a relative SQLite path made absolute, and its user info kept out of records.

A tracking URI may hold credentials (``postgresql://me:pw@db/mlflow``,
``https://token@mlflow.example``), from the config or ``MLFLOW_TRACKING_URI``.
MLflow gets the URI as given; run.json, tracking.json, log lines and error
messages show it with the password (or a user name alone, a token) masked.
"""

import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

SQLITE = "sqlite:///"


def absolute_uri(uri: str, cwd: Optional[str] = None) -> str:
    """A relative SQLite path made absolute (workers may run elsewhere); other URIs as given."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + str(Path(cwd or os.getcwd(), uri[len(SQLITE):]).resolve())
    return uri


def sqlite_file(uri: str) -> Optional[Path]:
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def _userinfo(uri: str) -> Optional[str]:
    """The user info of a URI (``me:pw`` of ``postgresql://me:pw@db/mlflow``), None without."""
    try:
        parts = urlsplit(uri)
        if parts.username is None and parts.password is None:
            return None
    except ValueError:  # malformed: MLflow names it when it is used; nothing to hide here
        return None
    return parts.netloc.rsplit("@", 1)[0]


def _masked(userinfo: str) -> str:
    """A password masked, or a user name alone (a token) masked, as pip shows URLs."""
    user, colon, _ = userinfo.partition(":")
    return f"{user}:***" if colon else "***"


def redacted_uri(uri: str) -> str:
    """``uri`` as records and log lines show it: ``postgresql://me:***@db/mlflow``,
    ``https://***@mlflow.example``."""
    return redacted_text(uri, uri)


def redacted_text(text: str, uri: str) -> str:
    """``text`` (an error naming URLs of the store) with the user info of ``uri`` masked."""
    userinfo = _userinfo(uri)
    return text.replace(f"{userinfo}@", f"{_masked(userinfo)}@") if userinfo else text
