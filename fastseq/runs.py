"""Run folders shared by every trainer: the folder name, the refusal to overwrite, config.json,
and the metrics log (metrics.csv as it goes, metrics.json at the end, TensorBoard if asked).
In a distributed run the folder is rank 0's: it alone checks, creates and writes it, and its
verdict (a refusal included) reaches every rank."""
import csv
import json
import math
import os
import pathlib
import re
import shutil

from .distributed import current, is_main

CONFIG = "config.json"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tensorboard"


class RunExistsError(ValueError):
    """A new run was pointed at a folder that already holds one."""

    def __init__(self, path):
        super().__init__(f"--out: {str(path)!r} already holds a run; pass --resume to continue it, "
                         f"--overwrite to replace it, or choose another --out")


def _slug(part) -> str:
    """A path or setting as a folder-name piece: a data path contributes its file name."""
    text = os.path.splitext(os.path.basename(str(part).rstrip("/\\")))[0] or str(part)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def run_name(model: str, *parts) -> str:
    """'charlm-shakespeare-fastseq-seed0': the model then what distinguishes its runs
    (data, impl, network, seed, ...); None and '' parts are left out."""
    return "-".join([model] + [_slug(p) for p in parts if p is not None and p != ""])


class RunDir:
    """One run's folder. A new run refuses a non-empty folder unless `overwrite` (which
    empties it first, so no file of the old run survives to be mistaken for the new one's);
    `resume` continues what is there."""

    def __init__(self, path, *, resume: bool = False, overwrite: bool = False):
        self.path = pathlib.Path(path)
        current().on_main(self._prepare, resume, overwrite)

    def _prepare(self, resume, overwrite):
        if resume and overwrite:
            raise ValueError("--resume and --overwrite: choose one (continue the run, or replace it)")
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out: {str(self.path)!r} is a file, not a run folder")
        if resume:
            if not self.path.is_dir():
                raise FileNotFoundError(f"--resume: no run folder {str(self.path)!r} to continue "
                                        f"(start it without --resume)")
        elif self.path.is_dir() and any(self.path.iterdir()):
            if not overwrite:
                raise RunExistsError(self.path)
            if not (self.path / CONFIG).is_file():
                # Only a folder fastseq wrote is emptied; anything else is the user's.
                raise ValueError(f"--overwrite: {str(self.path)!r} is not a fastseq run folder "
                                 f"(no {CONFIG}); choose another --out")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> pathlib.Path:
        return self.path / name

    def save_config(self, config: dict) -> None:
        if is_main():
            _write_json(self.file(CONFIG), config)

    def load_config(self) -> dict:
        """The config.json a previous run saved here ({} when there is none)."""
        def read():
            path = self.file(CONFIG)
            return json.loads(path.read_text()) if path.is_file() else {}
        return current().on_main(read)


class Metrics:
    """The run's metric history: log(step, loss=..., ...) appends to metrics.csv at once (so an
    interrupted run keeps it), finish() writes metrics.json. With resume the history already
    on disk is read back, and rewind(step) drops what came after the checkpoint. Every rank
    keeps the history (the values logged are already reduced over ranks); rank 0 writes it.
    world_size (default: the launch's) is recorded in metrics.json."""

    def __init__(self, run: RunDir, model: str, *, world_size: int = None, tensorboard: bool = False,
                 resume: bool = False):
        self.run, self.model = run, model
        self.world_size = int(world_size or current().world_size)
        self.writes = is_main()
        self.csv_path = run.file(METRICS_CSV)
        self.history = current().on_main(_read_csv, self.csv_path) if resume else []
        self.columns = _columns(self.history)
        self._rewrite_csv()
        self.writer = None
        if tensorboard:
            current().on_main(_check_tensorboard)  # a missing package refused on every rank alike
            if self.writes:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(run.file(TENSORBOARD)))

    def log(self, step: int, **values) -> None:
        entry = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        self.history.append(entry)
        new = [k for k in entry if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite_csv()  # a new column: the header changes, so the file is rewritten
        elif self.writes:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(entry)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, float(value), int(step))

    def rewind(self, step: int) -> None:
        """Forget entries after `step` (logged after the checkpoint a resumed run starts from)."""
        self.history = [e for e in self.history if e["step"] <= step]
        self._rewrite_csv()

    def last(self, key):
        """The latest logged value of `key`, or None."""
        return next((e[key] for e in reversed(self.history) if key in e), None)

    def finish(self, final: dict, steps: int, **extra) -> pathlib.Path:
        path = self.run.file(METRICS_JSON)
        if self.writes:
            _write_json(path, {"model": self.model, "world_size": self.world_size, "steps": int(steps),
                               "history": self.history, "final": dict(final), **extra})
        self.close()
        return path

    def close(self) -> None:
        """Flushes the TensorBoard events (finish does; an interrupted run calls it itself)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _rewrite_csv(self):
        if not self.writes:
            return
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.history)


def _check_tensorboard():
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: "
                         "pip install 'fastseq[tensorboard]'") from None


def _columns(history):
    columns = ["step"]
    for entry in history:
        columns += [k for k in entry if k not in columns]
    return columns


def _read_csv(path):
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def _write_json(path, data):
    # NaN/inf are not JSON: written as null so any JSON reader accepts the file.
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    tmp = pathlib.Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(clean(data), indent=1) + "\n")
    os.replace(tmp, path)
