"""One rank of a test launch (tests/test_distributed.py starts one process per rank with
torchrun's variables set, as torchrun would): runs `fastseq` commands inside one process
group. Usage: python tests/ddp_worker.py ARGV... [:: ARGV...]; exits with the first non-zero
code. Test hooks, from the environment:
  FASTSEQ_TEST_DUMP=DIR       each rank saves its trained model's parameters to DIR/rank<R>-<i>.pt
  FASTSEQ_TEST_FAIL=RANK:STEP that rank raises inside its training step number STEP
"""
import os
import sys

import torch

from fastseq import cli, distributed
from fastseq.models import train as lm_train


def install_hooks(state):
    dump = os.environ.get("FASTSEQ_TEST_DUMP")
    fail = os.environ.get("FASTSEQ_TEST_FAIL")
    original = lm_train.train

    def train(kind, args):
        if fail:
            rank, step = map(int, fail.split(":"))
            if rank == distributed.current().rank:
                # Raise from the optimizer step: inside the loop, after the gradient
                # all-reduce, so the other rank is left waiting in the next step's.
                calls = [0]
                adam_step = torch.optim.Adam.step

                def failing_step(self, *a, **k):
                    calls[0] += 1
                    if calls[0] == step:
                        raise RuntimeError(f"injected failure on rank {rank} at step {step}")
                    return adam_step(self, *a, **k)

                torch.optim.Adam.step = failing_step
        result = original(kind, args)
        if dump:
            params = {k: v.detach().cpu() for k, v in result["model"].state_dict().items()}
            torch.save({"params": params, "history": result["history"]},
                       os.path.join(dump, f"rank{distributed.current().rank}-{state['command']}.pt"))
        return result

    lm_train.train = train  # models/cli.py imports it when the command runs


def main(argv):
    commands, current = [], []
    for word in argv:
        if word == "::":
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    state = {"command": 0}
    install_hooks(state)
    torch.set_num_threads(1)
    with distributed.session():  # one group for every command (each main() reuses it)
        for i, command in enumerate(commands):
            state["command"] = i
            code = cli.main(command)
            if code:
                return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
