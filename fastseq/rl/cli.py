"""`fastseq train dqn|reinforce|a2c` and `fastseq eval`: train an agent on a Gymnasium
environment (run folder, progress, checkpoints, metrics, return plot) and evaluate a saved checkpoint.
A2C runs under torchrun as data-parallel learners; DQN and REINFORCE are one-process
algorithms (one replay buffer / one episode stream) and refuse a distributed launch."""
import dataclasses
import os

from ..cliargs import add_run_args, nonnegative_int, positive_float, positive_int
from ..runs import run_name

SINGLE_PROCESS = " (one process: refuses a torchrun launch)"
ALGOS = {
    "dqn": ("deep Q-network (replay buffer, target network, epsilon-greedy; MLP or LSTM Q-net)"
            + SINGLE_PROCESS, "fastseq.rl.dqn", "DQNConfig", "train_dqn"),
    "reinforce": ("REINFORCE policy gradient with a learned value baseline" + SINGLE_PROCESS,
                  "fastseq.rl.reinforce", "ReinforceConfig", "train_reinforce"),
    "a2c": ("advantage actor-critic over vectorised environments (under torchrun the ranks "
            "step num_envs / world_size environments each and learn as one)",
            "fastseq.rl.a2c", "A2CConfig", "train_a2c"),
}
DISTRIBUTED_ALGOS = ("a2c",)


def _require_gymnasium():
    try:
        import gymnasium  # noqa: F401
    except ImportError:
        raise ValueError("the RL commands need gymnasium: pip install 'fastseq[rl]'") from None


def _algo(name):
    import importlib
    _require_gymnasium()
    _, module, config_name, train_name = ALGOS[name]
    mod = importlib.import_module(module)
    return getattr(mod, config_name), getattr(mod, train_name)


def _parse_value(field, text):
    """Converts a --set value to the config field's type (bool, int, float, str, tuple of int)."""
    kind = type(field.default)
    try:
        if kind is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text.lower() in ("1", "true", "yes")
        if kind is tuple:
            return tuple(int(x) for x in text.split(",") if x)
        return kind(text)
    except ValueError:
        raise ValueError(f"--set {field.name}={text}: expected a {kind.__name__}") from None


def build_config(algo, args):
    config_cls, _ = _algo(algo)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values = {}
    if args.steps is not None:
        values["total_steps"] = args.steps
    if args.lr is not None:
        values["lr"] = args.lr
    if algo == "dqn":
        if args.double:
            values["double"] = True
        if args.network:
            values["network"] = args.network
    if algo == "a2c" and args.num_envs is not None:
        values["num_envs"] = args.num_envs
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in fields:
            raise ValueError(f"--set {key}: {algo} has no setting {key!r}; settings are {sorted(fields)}")
        values[key] = _parse_value(fields[key], text)
    config = config_cls(**values)
    config.validate()
    return config


def run_folder(args, config):
    """--out, or runs/<algo>-<env>[-<network>][-hidevel][-history<K>]-seed<seed>."""
    if args.out:
        return args.out
    network = config.network if args.model == "dqn" else None
    return os.path.join("runs", run_name(args.model, args.env, network, "hidevel" if args.hide_velocity else None,
                                         f"history{args.history}" if args.history and args.history > 1 else None,
                                         f"seed{args.seed}"))


def train(args):
    from ..cliargs import apply_threads
    from ..distributed import current

    dist = current()
    if dist.enabled and args.model not in DISTRIBUTED_ALGOS:
        raise ValueError(f"{args.model} trains in one process and does not run under torchrun "
                         f"(this launch has WORLD_SIZE={dist.world_size}); start it without torchrun, "
                         f"or train a2c, whose learners are data-parallel")
    apply_threads(args)
    config = build_config(args.model, args)
    _, train_fn = _algo(args.model)
    history = args.history or (8 if getattr(config, "network", "mlp") == "lstm" else 1)
    train_fn(args.env, config, seed=args.seed, out_dir=run_folder(args, config), hide_velocity=args.hide_velocity,
             history=history, progress=not args.no_progress, device=args.device, resume=args.resume,
             overwrite=args.overwrite, tensorboard=args.tensorboard, final_episodes=args.eval_episodes)
    return 0


def evaluate(args):
    import torch

    from .evaluate import evaluate_checkpoint

    torch.set_num_threads(args.threads or 1)
    returns, payload = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, seed=args.seed)
    stats = payload.get("stats", {})
    print(f"{payload['algo']} checkpoint {args.checkpoint} (env {payload['env']['env_id']}, "
          f"trained {stats.get('step', '?')} steps)")
    print(f"mean return over {len(returns)} greedy episodes: {returns.mean():.2f} "
          f"(std {returns.std():.2f}, min {returns.min():.0f}, max {returns.max():.0f})")
    return 0


def _settings_help(config_cls):
    """The --set keys with their defaults, for the end of --help."""
    fields = dataclasses.fields(config_cls)
    return "settings for --set KEY=VALUE (default in parentheses):\n" + "\n".join(
        f"  {f.name} ({','.join(map(str, f.default)) if isinstance(f.default, tuple) else f.default})"
        for f in fields)


def register(subparsers, train_subparsers):
    for name, (help_text, module, config_name, _) in ALGOS.items():
        try:
            import importlib
            epilog = _settings_help(getattr(importlib.import_module(module), config_name))
        except ImportError:  # no gymnasium: the command then explains what to install
            epilog = None
        p = train_subparsers.add_parser(name, help=help_text, description=help_text, epilog=epilog)
        p.add_argument("--env", default="CartPole-v1", help="Gymnasium environment id")
        p.add_argument("--steps", type=positive_int, help="environment steps to train for (default: the algorithm's "
                                                          "total_steps below)")
        p.add_argument("--lr", type=positive_float, help="learning rate (default: lr below)")
        p.add_argument("--hide-velocity", action="store_true",
                       help="partially observable CartPole: drop the two velocity components")
        p.add_argument("--history", type=positive_int,
                       help="stack the last K observations (default 8 with --network lstm, else 1)"
                       if name == "dqn" else "stack the last K observations (default 1)")
        if name == "dqn":
            p.add_argument("--network", choices=["mlp", "lstm"], help="Q-network (default mlp)")
            p.add_argument("--double", action="store_true", help="Double DQN targets")
        if name == "a2c":
            p.add_argument("--num-envs", type=positive_int, help="parallel environments, over all processes under torchrun (default 8)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override any setting listed below (repeatable)")
        p.add_argument("--eval-episodes", type=nonnegative_int, default=100,
                       help="greedy episodes for the final evaluation of the best checkpoint (0 = none)")
        add_run_args(p, f"{name}-<env>{'-<network>' if name == 'dqn' else ''}-seed<seed>", threads_default=1)
        p.set_defaults(func=train)

    p = subparsers.add_parser("eval", help="evaluate an RL checkpoint (greedy policy)")
    p.add_argument("--checkpoint", required=True, help="path to a best.pt / last.pt from fastseq train")
    p.add_argument("--episodes", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=10**6, help="episode i resets with seed+i")
    p.add_argument("--threads", type=nonnegative_int, default=1, help="torch CPU threads (0 = torch's default)")
    p.set_defaults(func=evaluate)
