"""argparse pieces every subcommand shares: one-line errors, defaults in --help, range-checked
numbers, --device checked against what torch can run here, and the run-folder flags."""
import argparse
import sys


class Parser(argparse.ArgumentParser):
    """Errors are one line (no usage block) and exit 2; help shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        # Flags without a meaningful default (None, False) would only show "(default: None)".
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def number(kind, low=None, high=None, *, low_open=False, high_open=False):
    """argparse type: int or float within [low, high] (an end excluded with low_open/high_open);
    argparse names the flag in the error ("argument --steps: expected an integer >= 1, got '0'")."""
    name = "an integer" if kind is int else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    wanted = f"{name} {' and '.join(bounds)}".strip()

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value != value or (low is not None and (value < low or (low_open and value == low))) \
                or (high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse's own messages name the type
    return parse


positive_int = number(int, 1)
nonnegative_int = number(int, 0)
positive_float = number(float, 0, low_open=True)
nonnegative_float = number(float, 0)
open_fraction = number(float, 0, 1, low_open=True, high_open=True)
dropout = number(float, 0, 1, high_open=True)


def device(text):
    """argparse type: a torch device this machine can run (cpu, cuda, cuda:N)."""
    if text == "cpu":
        return text
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if dev.type != "cuda":
        raise argparse.ArgumentTypeError(f"{text!r}: fastseq runs on cpu or cuda (cuda:N), not {dev.type}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch sees no CUDA device here (use --device cpu)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: there are {torch.cuda.device_count()} CUDA devices "
                                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return text


def add_device_args(p, threads_default=0):
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=nonnegative_int, default=threads_default,
                   help="torch CPU threads (0 = torch's default)")


def add_run_args(p, name_hint):
    """The flags of every trainer's run folder, progress display and metrics."""
    p.add_argument("--out", default=None, help=f"run folder (default runs/{name_hint})")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in the folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the folder from its last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="random seed (part of the default folder name)")
    add_device_args(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar or progress lines (evaluations and the summary still print)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into the run folder's tensorboard/")


def apply_threads(args):
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)


def threads_in_use():
    import torch
    return torch.get_num_threads()


def stderr_line(prog, message):
    print(f"{prog}: {message}", file=sys.stderr)
