"""Errors a user can act on.

The command line prints any :class:`UserError` as one line (no traceback)
and exits with its ``exit_status`` (2: bad input; 74 for a failure of the
machine the program foresaw, such as too little free space), and the operating system's failures it can name
(:func:`describe_os_error`: disk full, read-only, permission denied, …)
as one line with status 74 (``EX_IOERR``); everything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """Bad input, a missing file or an unusable setting, with what to do."""

    #: The command line's exit status for this error (2: bad input or settings).
    exit_status = 2


class DataError(UserError):
    """The dataset or the feature cache is missing, malformed or inconsistent."""


class ConfigError(UserError):
    """A configuration profile or override is invalid."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (SLURM's time limit, ``scancel``, ``kill``): handled
    like Ctrl-C, so every write in progress is undone on the way out."""


#: What to do about the operating system's failures, by errno name; the
#: command line prints one of these (with the path) instead of a traceback.
OS_ADVICE = {
    "ENOSPC": "no space left on its disk: free some space there or choose another --workdir",
    "EDQUOT": "the disk quota is exceeded: free some space there or choose another --workdir",
    "EFBIG": "the file size limit of this session (ulimit -f) or file system is reached: raise it or "
             "choose another --workdir",
    "EROFS": "it is on a read-only file system: choose a writable --workdir",
    "EACCES": "permission denied: give this user access to it (write access for outputs) or choose another "
              "--workdir",
    "EPERM": "the operation is not permitted there: give this user access to it or choose another --workdir",
    "ENOENT": "it does not exist (moved or deleted while running?): check the path",
    "ENOTDIR": "a part of the path is a file, not a folder: check the path or choose another --workdir",
    "EISDIR": "it is a folder where a file was expected: move the folder away",
    "EIO": "input/output error: the disk or network file system failed; check it",
    "ENAMETOOLONG": "the path is too long for the file system: choose a shorter --workdir",
}


def describe_os_error(exc: OSError, where=None, option: str = "--workdir") -> str | None:
    """One line for an ``OSError`` of a kind in :data:`OS_ADVICE`: the path
    (or ``where`` when the error names none) and what to do; None for other
    kinds (those are bugs and keep their traceback). ``option`` is the
    command-line option that chose the failing folder (``--out`` for
    ``separate``'s outputs), named in the advice in place of ``--workdir``."""
    import errno

    exc = _first_failure(exc)
    name = errno.errorcode.get(exc.errno or -1)
    if name not in OS_ADVICE:
        return None
    path = exc.filename if exc.filename is not None else (f"a file under {where}" if where else "a file")
    also = f" (and {exc.filename2})" if exc.filename2 is not None else ""
    advice = OS_ADVICE[name].replace("--workdir", option)
    return f"cannot use {path}{also}: {advice}; then run the same command again (finished work is kept)"


def _first_failure(exc: OSError) -> OSError:
    """The failure that started it all. A write in a ``finally`` (the
    timings file) that fails while the stage's own failure unwinds (the
    same full disk) has that failure as its implicit context, possibly
    under an explicit ``raise … from`` that names its path: the line names
    the file whose write failed first, as its own writer named it. Explicit
    causes are renamings of one failure and keep the outer name; only named
    failures of the same errno count (an unrelated error handled earlier is
    not the cause, a library's unnamed inner failure adds nothing)."""
    while True:
        earlier, link = None, exc
        while link is not None and earlier is None:
            context = None if link.__suppress_context__ else link.__context__
            if (isinstance(context, OSError) and context is not link.__cause__ and context.errno == exc.errno
                    and context.filename is not None):
                earlier = context
            link = link.__cause__ if isinstance(link.__cause__, OSError) else None
        if earlier is None:
            return exc
        exc = earlier
