"""Data-parallel training on several processes or machines, the one mechanism every trainer
uses: detect a torchrun launch (WORLD_SIZE, RANK, LOCAL_RANK), open and close the process
group (gloo on CPU, nccl on CUDA with one device per local rank), wrap a model in
DistributedDataParallel, split a global batch into per-rank shards, reduce metrics, and run
file-system work on rank 0 alone with its outcome (or its error) shared with every rank.

Outside a launch (or with WORLD_SIZE=1) `current()` is a one-process context whose helpers
are the identity, so the trainers have one code path."""
import contextlib
import dataclasses
import datetime
import os
import re
import sys

import torch

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
# How long a collective may wait for the slowest rank before it fails (rank 0 may be
# writing a checkpoint and plotting while the others wait), in seconds.
TIMEOUT_ENV = "FASTSEQ_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600


class PeerFailed(RuntimeError):
    """A collective failed because another rank ended (its own error is in its output)."""


@dataclasses.dataclass(frozen=True)
class Context:
    """This process's place in the run: rank 0 of 1 outside a distributed launch."""
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = ""
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- sharding ----
    def local_batch(self, batch_size: int, flag: str = "--batch-size") -> int:
        """This rank's rows of a global batch: batch_size / world_size, which must be whole so
        that the ranks together compute exactly the one-process gradient."""
        if batch_size % self.world_size:
            raise ValueError(f"{flag}: {batch_size} is not divisible by the {self.world_size} processes "
                             f"of this launch (WORLD_SIZE); pass a multiple of {self.world_size}")
        return batch_size // self.world_size

    def shard(self, n: int) -> slice:
        """This rank's contiguous block of n items (sizes differ by at most one; some may be
        empty when n < world_size). Rank order, so the blocks concatenate back to range(n)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def share(self, value):
        """A rank's mean over its equal-sized shard as its share of the global mean: the
        shares summed over ranks (all_sum) are the mean over the whole batch."""
        return value / self.world_size

    # ---- collectives (no-ops in one process) ----
    def all_sum(self, values):
        """Element-wise sum over ranks of a list of numbers (one all-reduce) -> list of floats."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        _collective(dist.all_reduce, t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a stop request, a failure)."""
        return self.all_sum([1.0 if flag else 0.0])[0] > 0

    def gather(self, obj) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        _collective(dist.all_gather_object, out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        _collective(dist.broadcast_object_list, box, 0)
        return box[0]

    def on_main(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) on rank 0 alone; every rank returns its result, or raises its
        error (the same type and message), so a refusal on rank 0 (a run folder that exists,
        a missing checkpoint) ends every rank alike instead of leaving them waiting."""
        if not self.enabled:
            return fn(*args, **kwargs)
        outcome, error = None, None
        if self.is_main:
            try:
                outcome = ("ok", fn(*args, **kwargs))
            except Exception as exc:  # shared, then re-raised below
                error = exc
                outcome = ("error", type(exc), str(exc))
        outcome = self.broadcast(outcome)
        if error is not None:
            raise error
        if outcome[0] == "error":
            raise _rebuild(outcome[1], outcome[2])
        return outcome[1]

    # ---- models and random numbers ----
    def wrap(self, model):
        """DistributedDataParallel(model) in a launch (which broadcasts rank 0's parameters
        and buffers: every rank starts from the same weights), else the model itself."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        cuda = torch.device(self.device).type == "cuda"
        return DistributedDataParallel(model, device_ids=[torch.device(self.device).index] if cuda else None)

    def seed_rank(self, seed: int) -> None:
        """After the model is built: a different torch RNG stream per rank (dropout masks,
        sampling) so ranks do not repeat each other's noise. One process keeps its stream."""
        if self.enabled:
            torch.manual_seed(seed * 1_000_003 + self.rank)

    def rng_states(self):
        """Every rank's torch RNG state (rank order), for a checkpoint that resumes exactly."""
        return self.gather(torch.get_rng_state())

    def restore_rng(self, states) -> bool:
        """Sets this rank's torch RNG from a checkpoint's per-rank states; False (nothing
        set) when the run was saved by another number of processes."""
        if states is None or len(states) != self.world_size:
            return False
        torch.set_rng_state(states[self.rank])
        return True


SINGLE = Context()
_current = SINGLE


def current() -> Context:
    """The active context: the one `session` opened, else the one-process context."""
    return _current


def is_main() -> bool:
    """True on rank 0 (and in one process): the rank that prints and writes files."""
    return _current.is_main


def launch_env(environ=None):
    """(world_size, rank, local_rank) from torchrun's variables, None when absent."""
    environ = os.environ if environ is None else environ
    present = [k for k in ENV_VARS if k in environ]
    if not present:
        return None
    if len(present) != len(ENV_VARS):
        missing = [k for k in ENV_VARS if k not in environ]
        raise ValueError(f"distributed launch: {', '.join(present)} set but {', '.join(missing)} not; "
                         f"start the processes with torchrun (python -m torch.distributed.run)")
    values = {}
    for key in ENV_VARS:
        try:
            values[key] = int(environ[key])
        except ValueError:
            raise ValueError(f"distributed launch: {key} must be an integer, got {environ[key]!r}") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"distributed launch: expected WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and "
                         f"LOCAL_RANK >= 0, got WORLD_SIZE={world} RANK={rank} LOCAL_RANK={local}")
    return world, rank, local


def _device_for(device: str, local_rank: int) -> str:
    """--device under a launch: cpu stays cpu; cuda becomes cuda:LOCAL_RANK (one GPU per process)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpu"
    if dev.index is not None:
        raise ValueError(f"--device: {device!r} names one GPU, but under torchrun each process takes "
                         f"cuda:LOCAL_RANK; pass --device cuda")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"--device cuda: LOCAL_RANK {local_rank} needs GPU {local_rank}, but this machine "
                         f"has {count}; start at most {count} processes per node (--nproc-per-node)")
    return f"cuda:{local_rank}"


def _timeout():
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV}: expected a positive number of seconds, got {text!r}")
    return datetime.timedelta(seconds=seconds)


@contextlib.contextmanager
def session(device: str = "cpu"):
    """The process group for the duration of the block, when torchrun launched more than one
    process; yields the Context (the one-process context otherwise). The group is destroyed
    on the way out whatever happens: normal end, Interrupted, or an exception on this rank.
    On an exception no collective is attempted, so this rank exits at once and the others'
    pending collective fails (gloo: 'connection closed by peer') instead of waiting."""
    global _current
    env = launch_env()
    if env is None or env[0] == 1 or _current.enabled:
        yield _current
        return
    import torch.distributed as dist

    world, rank, local = env
    where = _device_for(device, local)
    backend = "nccl" if where.startswith("cuda") else "gloo"
    if where.startswith("cuda"):
        torch.cuda.set_device(torch.device(where))  # before the group: nccl binds to it
    kwargs = {"device_id": torch.device(where)} if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=_timeout(), world_size=world, rank=rank, **kwargs)
    _current = Context(world_size=world, rank=rank, local_rank=local, backend=backend, device=where)
    ok = False
    try:
        yield _current
        ok = True
    except RuntimeError as exc:
        # DDP's gradient all-reduce runs inside backward(), outside _collective: a peer that
        # ended surfaces there as a bare RuntimeError from the backend.
        if not isinstance(exc, PeerFailed) and _peer_gone(exc):
            raise PeerFailed(_peer_message(exc)) from exc
        raise
    finally:
        _current = SINGLE
        _shutdown(ok, backend)


def _shutdown(ok, backend):
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if not ok and backend == "nccl":
        # A failed rank may leave nccl work in flight; destroy would wait on it, abort does not.
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:
            try:
                abort()
                return
            except Exception:  # fall back to destroy
                pass
    try:
        if ok:
            # Both ranks reach this point before either tears its group down: a gloo rank that
            # destroys its pairs while the peer still sends was seen to abort ("terminate
            # called without an active exception", seen once in a CI run of a 4-command launch).
            dist.barrier()
    except Exception:  # a peer that ended early: its own error is the one to report
        pass
    try:
        dist.destroy_process_group()
    except Exception as exc:  # the run's own outcome matters more than a failed teardown
        print(f"fastseq: warning: destroying the process group failed ({exc})", file=sys.stderr)


def _peer_gone(exc) -> bool:
    import torch.distributed as dist

    text = str(exc).lower()
    return isinstance(exc, dist.DistError) or any(
        s in text for s in ("closed by peer", "connection reset", "broken pipe", "gloo", "nccl"))


def _peer_message(exc) -> str:
    lines = str(exc).splitlines()
    # gloo's text: "[.../pair.cc:553] Connection closed by peer [addr]:port. This is typically ..."
    first = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else type(exc).__name__).split(". ")[0]
    return (f"rank {_current.rank}: another process of this launch failed or ended ({first}); "
            f"see its error above")


def _collective(fn, *args):
    """A collective whose failure because a peer ended reads as PeerFailed (one line)."""
    try:
        return fn(*args)
    except PeerFailed:
        raise
    except RuntimeError as exc:
        raise PeerFailed(_peer_message(exc)) from exc


def _rebuild(cls, message):
    """An exception of rank 0's type carrying its message (without rerunning its __init__,
    whose arguments may differ, e.g. RunExistsError(path))."""
    try:
        exc = cls.__new__(cls)
        exc.args = (message,)
        exc.from_main = True  # the CLI prints it once, on rank 0
        return exc
    except Exception:
        return RuntimeError(message)
