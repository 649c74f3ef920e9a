"""Training progress that suits where it runs: a tqdm bar on a terminal, a plain line every
few seconds in a log file or pipe; plus the one-line header and summary every trainer prints.
In a distributed run only rank 0 prints any of it (the others would repeat it)."""
import sys
import time

from tqdm import tqdm

from .distributed import is_main


def _fields(values):
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


class Progress:
    """update(step, **fields) after each step; write(line) for lines that must not be lost
    (evaluations, notices). `enabled=False` (--no-progress) keeps those lines and drops
    only the running display."""

    def __init__(self, total, *, initial=0, desc="train", unit="step", enabled=True, every=10.0,
                 stream=None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.every = int(total), desc, float(every)
        self.start = self.last_line = time.perf_counter()
        self.initial = int(initial)
        self.bar = None
        self.silent = not is_main()
        enabled = enabled and not self.silent
        self.lines = enabled and not self.stream.isatty()
        if enabled and not self.lines:
            self.bar = tqdm(total=self.total, initial=self.initial, desc=desc, unit=unit,
                            file=self.stream, dynamic_ncols=True, mininterval=0.5)

    def rate(self, step):
        """Steps per second since this process started (resumed steps not counted)."""
        return (step - self.initial) / max(time.perf_counter() - self.start, 1e-9)

    def update(self, step, **fields):
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in fields.items()},
                                 refresh=False)
        elif self.lines and time.perf_counter() - self.last_line >= self.every:
            self.last_line = time.perf_counter()
            print(f"{self.desc}: step {step}/{self.total} ({100 * step / self.total:.0f}%)  {_fields(fields)}",
                  file=self.stream, flush=True)

    def write(self, line):
        if self.silent:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def header(model, *, parameters, data, device, threads, **more):
    """'charlm: 0.88M parameters, data shakespeare, device cpu, 1 threads, ...'"""
    if not is_main():
        return
    print(f"{model}: {parameters / 1e6:.2f}M parameters, data {data}, device {device}, "
          f"{threads} thread{'s' if threads != 1 else ''}" + "".join(f", {k} {v}" for k, v in more.items()),
          flush=True)


def summary(model, *, seconds, rate, unit, final, files):
    """'charlm: done in 61.2 s (23,456 tokens/s); final val_loss 1.52 ...; wrote a, b'"""
    if not is_main():
        return
    print(f"{model}: done in {seconds:.1f} s ({rate:,.0f} {unit}/s); final {_fields(final)}; "
          f"wrote {', '.join(str(f) for f in files)}", flush=True)


def note(line):
    """A one-off line (resuming, wrote ...), printed once in a distributed run."""
    if is_main():
        print(line, flush=True)
