"""Exit codes for the environment's failures: a full disk or a read-only / unwritable store is not bad input.

Store and audit errors wrap the ``OSError`` behind them; the CLI's error handlers ask here whether that (or an
error message that kept only its ``[Errno N]``) is the environment's failure, and end with exit 1 and what to
do instead of the error's own exit code (2 for a ``StoreError``).
"""

from __future__ import annotations

import errno
import re

# The environment's failures, not the user's input: they end with exit 1 and say what to do.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space on the disk that holds {where}, then run the command again",
    errno.EDQUOT: "the disk quota is used up: free space on the disk that holds {where}, then run the "
    "command again",
    errno.EROFS: "the file system is read-only: remount it read-write, or pass a writable --store, then run "
    "the command again",
    errno.EACCES: "permission denied: make {where} writable (and readable) for this user, or pass another "
    "--store, then run the command again",
    errno.EPERM: "operation not permitted: make {where} writable (and readable) for this user, or pass "
    "another --store, then run the command again",
}

_ERRNO_IN_MESSAGE = re.compile(r"\[Errno (\d+)\]")


def environment_problem(exc: BaseException) -> str | None:
    """What to do when ``exc`` (or an error that caused it) is a full disk or a read-only / unwritable
    file system; None for anything else."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ENVIRONMENT_ERRNOS:
            where = current.filename or "the model store"
            return _ENVIRONMENT_ERRNOS[current.errno].format(where=where)
        current = current.__cause__ or current.__context__
    # An error that crossed a process or a stored result has lost its cause; its message still names it.
    found = _ERRNO_IN_MESSAGE.search(str(exc))
    if found is not None and int(found.group(1)) in _ENVIRONMENT_ERRNOS:
        return _ENVIRONMENT_ERRNOS[int(found.group(1))].format(where="the model store")
    return None


def error_text_and_exit_code(exc: BaseException) -> tuple[str, int]:
    """The paragraph to print for ``exc`` and the exit code: the environment's failures get what to do
    appended and exit 1; other errors keep their message and their ``exit_code`` (1 when they have none)."""
    problem = environment_problem(exc)
    if problem is None:
        return str(exc), int(getattr(exc, "exit_code", 1))
    return f"{exc}. {problem[0].upper()}{problem[1:]}", 1
