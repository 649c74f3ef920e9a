"""Clean interrupts: SIGINT/SIGTERM ask the training loop to stop at the next step boundary,
where it saves a resumable checkpoint and raises Interrupted (the CLI prints one line, exits 130)."""
import contextlib
import signal

EXIT_CODE = 130  # the shell's code for "ended by SIGINT"


class Interrupted(Exception):
    """Training stopped on a signal after saving; the message says how to resume."""


class StopRequest:
    """Set by the signal handler; the loop polls `requested` once per step. Stopping only
    between steps keeps the saved state exactly that of a finished step, so a resumed run
    reproduces an uninterrupted one."""

    def __init__(self):
        self.requested = False
        self.signal_name = None


@contextlib.contextmanager
def graceful_interrupt():
    """Within the block SIGINT and SIGTERM set a StopRequest instead of killing the process;
    a second signal restores the default behaviour (so a stuck save can still be killed)."""
    stop = StopRequest()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, _frame):
        stop.requested, stop.signal_name = True, signal.Signals(signum).name
        for sig in previous:
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
