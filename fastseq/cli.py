"""The `fastseq` command: each feature module registers its own subcommands here."""
import importlib
import sys

from .cliargs import Parser
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
    try:
        code = args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        # User errors (missing file, bad setting) read as one line, not a traceback.
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return EXIT_CODE
    except KeyboardInterrupt:
        # Outside a training loop (sampling, evaluation) there is nothing to save.
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_CODE
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
