"""Clean interrupts: SIGINT/SIGTERM ask the training loop to stop at the next step boundary,
where it saves a resumable checkpoint and raises Interrupted (the CLI prints one line, exits 130).
In a distributed run the loop combines every rank's request (fastseq.distributed) so all stop
at the same step."""
import contextlib
import signal
import time

# Under torchrun one Ctrl-C arrives twice: from the terminal (to the whole process group) and
# forwarded by torchrun a moment later. A repeat this soon after the first is the same request.
DISTRIBUTED_REPEAT_S = 2.0

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
def graceful_interrupt(repeat_grace=None):
    """Within the block SIGINT and SIGTERM set a StopRequest instead of killing the process;
    a second signal restores the default behaviour (so a stuck save can still be killed),
    unless it comes within `repeat_grace` seconds of the first (default: DISTRIBUTED_REPEAT_S
    in a distributed run, else 0)."""
    if repeat_grace is None:
        from .distributed import current
        repeat_grace = DISTRIBUTED_REPEAT_S if current().enabled else 0.0
    stop = StopRequest()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    first_at = []

    def restore_defaults():
        for sig in previous:
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)

    def handler(signum, _frame):
        if not stop.requested:
            stop.requested, stop.signal_name = True, signal.Signals(signum).name
            first_at.append(time.monotonic())
            if repeat_grace <= 0:
                restore_defaults()
            return
        if time.monotonic() - first_at[0] < repeat_grace:
            return  # the launcher's copy of the signal already being handled
        # A real second signal: the default behaviour, for this one and any later one.
        restore_defaults()
        signal.raise_signal(signum)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
