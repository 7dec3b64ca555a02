"""A training run's ``output_dir``: unique by default, held by one run at a time, and left clean
when the run ends with nothing worth keeping.

- The default ``output_dir`` (``outputs/train/<date>/<time>-<pid>``, the ``ruyi_run`` resolver) is
  unique per process, so two runs started in the same second do not share it. Lightning's child
  ranks (``trainer=ddp``) inherit their parent's through the environment.
- :class:`OutputDirClaim` makes a run the only writer of its folder (a ``flock``, which the kernel
  releases if the run is killed) and refuses a folder that already holds an earlier run's results.
- A run that fails, is refused or is interrupted before any checkpoint or export exists removes
  what it created there (its ``logs/``, its latent cache, folders it made), so the corrected rerun
  can use the same ``output_dir``. Files of the user's in that folder are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
from datetime import datetime
from pathlib import Path

from ruyi.errors import OutputError
from ruyi.files import make_parents, remove_created

# what a run writes into output_dir: none may exist beforehand (Lightning's CSV logger would
# otherwise delete earlier logs, and an export never replaces a file)
OWNED = ("logs", "checkpoints", "lora.safetensors", "checkpoint", "summary.json", "latent_cache")
RESULTS = ("checkpoints", "lora.safetensors", "checkpoint")  # what makes a run worth keeping
LOCK = ".ruyi-train.lock"
RUN_ID_ENV = "RUYI_TRAIN_RUN"
_RUNS = itertools.count()


def run_id() -> str:
    """``<date>/<time>-<pid>`` (``-<n>`` for a process's n-th config): the default output folder's
    name. A Lightning child rank (LOCAL_RANK > 0) takes the one its parent exported."""
    inherited = os.environ.get(RUN_ID_ENV)
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return inherited
    count = next(_RUNS)
    ident = f"{datetime.now():%Y-%m-%d/%H-%M-%S}-{os.getpid()}" + (f"-{count}" if count else "")
    os.environ[RUN_ID_ENV] = ident
    return ident


def register_resolvers() -> None:
    """``${ruyi_run:}`` for configs/train.yaml; cached per config, so one config sees one id."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("ruyi_run"):
        OmegaConf.register_new_resolver("ruyi_run", run_id, use_cache=True)


def check_output_dir(output_dir: Path, *, locked_by_me: bool = False) -> None:
    """Refuse a file, a folder another live run holds, or one holding an earlier run's results."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"output_dir={output_dir} is a file; give a folder")
    taken = [name for name in OWNED if (output_dir / name).exists()]
    if not taken:
        return
    holder = None if locked_by_me else lock_holder(output_dir / LOCK)
    if holder is not None:
        raise OutputError(f"output_dir={output_dir} is in use by another training run ({holder}); pick another output_dir")
    if not locked_by_me and (output_dir / LOCK).exists() and set(taken) <= {"logs", "latent_cache"}:
        # a run that could not clean up (SIGKILL, power loss) before it wrote any checkpoint
        raise OutputError(
            f"output_dir={output_dir} holds {', '.join(taken)} of a run that was killed before its first checkpoint; "
            f"delete {' and '.join(str(output_dir / name) for name in taken)}, or pick a new output_dir"
        )
    raise OutputError(
        f"output_dir={output_dir} already holds {', '.join(taken)} from an earlier run; pick a new output_dir "
        "(resume=<that run>/checkpoints/<file>.ckpt continues it)"
    )


def lock_holder(lock: Path) -> str | None:
    """What the lock file says about the live run holding it, or None if no live run holds it."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return lock.read_text().strip() or "another process"
    finally:
        os.close(fd)  # also drops the probe's shared lock
    return None


class OutputDirClaim:
    """This process's hold on ``output_dir`` from before the weights load until the run ends."""

    def __init__(self, output_dir: Path) -> None:
        check_output_dir(output_dir)  # before creating anything
        self.output_dir = output_dir
        self.created = make_parents(output_dir)
        self.lock = output_dir / LOCK
        self._lock_existed = self.lock.exists()
        self._fd: int | None = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.lock.read_text().strip() or "another process"
            self._close(remove_lock=False)
            raise OutputError(
                f"output_dir={output_dir} is in use by another training run ({holder}); pick another output_dir"
            ) from None
        try:
            check_output_dir(output_dir, locked_by_me=True)  # again: a run that finished meanwhile
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"pid {os.getpid()}".encode())
        except BaseException:
            self._close(remove_lock=True)
            raise

    def has_results(self) -> bool:
        """A finished checkpoint file or an export: something a rerun must not overwrite."""
        checkpoints = self.output_dir / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
            return True
        return any((self.output_dir / name).exists() for name in RESULTS if name != "checkpoints")

    def release(self) -> bool:
        """End the claim. Without a checkpoint or export, remove what this run created here (it
        was checked not to exist before) and return False; else keep everything and return True."""
        if self._fd is None:
            return True
        kept = self.has_results()
        if not kept:
            for name in OWNED:
                path = self.output_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists() or path.is_symlink():
                    path.unlink(missing_ok=True)
        self._close(remove_lock=True)
        return kept

    def _close(self, *, remove_lock: bool) -> None:
        if remove_lock and not self._lock_existed:
            self.lock.unlink(missing_ok=True)  # while still locked: a waiting run then finds the results
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        remove_created(self.created)  # only while empty: never a folder with anything in it

    def describe(self) -> str:
        """What an interrupted run says about its folder."""
        if not self.output_dir.exists():
            return f"nothing was written (output_dir={self.output_dir}, which this run had made, was removed again)"
        if self.has_results():
            return (f"nothing was exported; output_dir={self.output_dir} keeps this run's checkpoints "
                    "(resume=<output_dir>/checkpoints/<file>.ckpt continues it in a new output_dir)")  # fmt: skip
        return f"nothing was written; output_dir={self.output_dir} is as it was before this run"


class RunWatch:
    """Filled in by the run as it goes, read by the interrupt message."""

    def __init__(self) -> None:
        self.claim: OutputDirClaim | None = None

    def describe(self) -> str:
        return self.claim.describe() if self.claim is not None else "nothing was written"


@contextlib.contextmanager
def claimed(output_dir: Path, watch: RunWatch | None = None):
    """``OutputDirClaim`` for the block, released (cleaned up if nothing was made) when it ends."""
    claim = OutputDirClaim(output_dir)
    if watch is not None:
        watch.claim = claim
    try:
        yield claim
    finally:
        claim.release()
