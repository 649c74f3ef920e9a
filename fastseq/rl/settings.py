"""Config checks shared by the agents: each setting's allowed range, and an error that names
the command-line flag that sets it (--steps, --lr, ... or --set KEY=VALUE)."""

FLAGS = {"total_steps": "--steps", "lr": "--lr", "num_envs": "--num-envs", "network": "--network"}

AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
POSITIVE = (lambda v: v > 0, "a number > 0")
UNIT = (lambda v: 0 <= v <= 1, "a number in [0, 1]")


def check(config, rules):
    """rules: {field: (predicate, allowed range in words)}; ValueError for the first field out of range."""
    for name, (ok, allowed) in rules.items():
        value = getattr(config, name)
        if not ok(value):
            raise ValueError(f"{FLAGS.get(name, f'--set {name}')}: expected {allowed}, got {value!r}")
