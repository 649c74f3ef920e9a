"""The `fastseq` command: each feature module registers its own subcommands here."""
import contextlib
import importlib
import sys

from . import distributed
from .cliargs import Parser
from .distributed import PeerFailed
from .signals import EXIT_CODE, Interrupted

# Each module exposes register(subparsers, train_subparsers).
COMMAND_MODULES = [
    "fastseq.info",
    "fastseq.bench.cli",
    "fastseq.rl.cli",
    "fastseq.models.cli",
    "fastseq.models.vision.cli",
]


def build_parser():
    from . import __version__

    parser = Parser(prog="fastseq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastseq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train a model or an agent")
    train_sub = train.add_subparsers(dest="model", required=True, metavar="MODEL")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, train_sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    name = " ".join(["fastseq", args.command] + ([args.model] if args.command == "train" else []))
    rank = ""  # "[rank 1] " on the errors of a distributed run, which every rank may print
    try:
        with _training_session(args) as ctx:
            rank = f"[rank {ctx.rank}] " if ctx.enabled else ""
            code = args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        # User errors (missing file, bad setting) read as one line, not a traceback. An
        # error rank 0 shared with the others (distributed.on_main) is printed by rank 0 alone.
        if not getattr(exc, "from_main", False):
            print(f"{rank}{name}: error: {exc}", file=sys.stderr)
        return 2
    except PeerFailed as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        if not rank or rank == "[rank 0] ":  # every rank stops at the same step; one says so
            print(exc, file=sys.stderr)
        return EXIT_CODE
    except KeyboardInterrupt:
        # Outside a training loop (sampling, evaluation) there is nothing to save.
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_CODE
    return int(code or 0)


def _training_session(args):
    """`fastseq train ...` under torchrun runs in a process group (fastseq.distributed);
    every other command, and a plain launch, runs as one process."""
    if args.command != "train":
        return contextlib.nullcontext(distributed.SINGLE)
    return distributed.session(getattr(args, "device", "cpu"))


if __name__ == "__main__":
    sys.exit(main())
