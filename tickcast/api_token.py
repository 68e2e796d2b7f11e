"""The forecast API's bearer token: the local one ``tickcast up`` generates, and when one is required.

``tickcast up`` keeps one token in the state folder (``.tickcast/api-token``, mode 0600,
created once and reused by every later ``up``) and hands it to Serve, the streaming
forecaster and the dashboard through ``TICKCAST_SERVING__AUTH_TOKEN``, so the local API
requires it by default. A token the user sets in that variable wins over the file.

Serve also refuses to listen on anything but a loopback address without a token
(:func:`require_token_when_exposed`): an API reachable from the network must not be open.

The token is a secret: nothing here logs it or puts it into an error message.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from pathlib import Path

from tickcast.errors import ConfigError
from tickcast.private_files import create_once

#: The token file's name under the state folder.
TOKEN_FILE = "api-token"
#: The setting that carries the token to every service.
TOKEN_SETTING = "TICKCAST_SERVING__AUTH_TOKEN"
#: Shortest token accepted from the file: 32 bytes of randomness encode to 43 characters.
MIN_TOKEN_CHARS = 32


def token_path(state_dir: Path | str) -> Path:
    """Where the local token lives under ``state_dir``."""
    return Path(state_dir).expanduser().resolve() / TOKEN_FILE


def ensure_local_token(state_dir: Path | str) -> str:
    """The local API token: read from ``state_dir``, or created there (mode 0600) on first use.

    Creation is atomic: the token is written to a private temporary file that is then
    hard-linked into place, so two ``up`` started at once agree on one token and nobody
    ever reads a half-written file.

    Raises:
        ConfigError: when the existing file is readable by others, not ours, or malformed.
    """
    path = token_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    create_once(path, (secrets.token_urlsafe(32) + "\n").encode())
    return read_token(path)


def read_token(path: Path) -> str:
    """Read a token file, refusing one that other users could read or that is not a token.

    Raises:
        ConfigError: naming the file and how to repair it (never the token itself).
    """
    info = path.stat()
    if info.st_uid != os.getuid():
        raise ConfigError(
            TOKEN_SETTING,
            f"the token file {path} belongs to another user",
            f"delete {path} (a new token is generated on the next `tickcast up`), or set {TOKEN_SETTING}",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            TOKEN_SETTING,
            f"the token file {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o})",
            f"run `chmod 600 {path}`, or delete it to get a new token on the next `tickcast up`",
        )
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(
            TOKEN_SETTING,
            f"the token file {path} does not hold a token of at least {MIN_TOKEN_CHARS} characters",
            f"delete {path}; the next `tickcast up` writes a new one",
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other host name may resolve to a reachable address


def require_token_when_exposed(host: str, token: str | None) -> None:
    """Refuse to serve the API on a non-loopback address without a bearer token.

    Raises:
        ConfigError: naming ``TICKCAST_SERVING__AUTH_TOKEN`` and ``TICKCAST_SERVING__HOST``.
    """
    if token or is_loopback(host):
        return
    raise ConfigError(
        TOKEN_SETTING,
        f"unset while Serve binds {host} (TICKCAST_SERVING__HOST), an address other machines can reach; "
        "the forecast API would be open to anyone on the network",
        f"set {TOKEN_SETTING} to a long random secret (e.g. `python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))'`), or bind 127.0.0.1",
    )
