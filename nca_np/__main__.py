"""``python -m nca_np`` and the ``nca-np`` command: see :mod:`nca_np.cli`.

Ctrl-C or SIGTERM while the modules load (NumPy, SciPy: a second or more)
ends in one line too, as they do once a stage runs.
"""

import sys


def entry() -> int:
    """Load the command line and run it; an interruption while loading is one line."""
    import signal

    from .errors import Terminated

    def stop(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, stop)
    try:
        from .cli import main
    except KeyboardInterrupt as exc:
        how, status = ("stopped by SIGTERM", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"\nnca-np: {how} while starting; nothing was done", file=sys.stderr)
        return status
    return main()


if __name__ == "__main__":
    sys.exit(entry())
