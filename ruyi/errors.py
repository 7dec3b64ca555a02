"""The user-error family: what a user can fix from the message alone.

Entry points (CLI, ComfyUI, benchmarks) map a :class:`RuyiUserError` to one line and exit code 2.
Anything else that escapes is a bug in ruyi and keeps its traceback (exit 1).

Each class also derives from the builtin exception a Python caller would expect (``ValueError``
for a bad value, ``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_USAGE = 2  # what an entry point returns for a user error
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RuyiUserError(Exception):
    """Base: a bad input, option, file or environment, reported as one line naming the fix."""

    exit_code = EXIT_USAGE

    def __str__(self) -> str:
        # one line, whatever the message was built from
        return " ".join(str(self.args[0] if self.args else "").split())


class ConfigError(RuyiUserError, ValueError):
    """An option value, or a combination of options, that cannot work."""


class InputError(RuyiUserError, ValueError):
    """A start/end image, a LoRA file or another input the user passed is unusable."""


class OutputError(RuyiUserError, ValueError):
    """The output location cannot be written, or writing it would destroy the user's files."""


class CheckpointError(RuyiUserError, RuntimeError):
    """A checkpoint folder is missing, incomplete or does not fit the model."""


class MissingWeightsError(CheckpointError, FileNotFoundError):
    """The checkpoint folder is not there (and may not be downloaded)."""


class AcceleratorRequired(RuyiUserError, RuntimeError):
    """A strategy or device choice needs a CUDA GPU and none is visible."""


class UnknownComponentError(ConfigError, KeyError):
    """A registry name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return RuyiUserError.__str__(self)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM, raised in the main thread so that every ``finally`` and temporary-file
    cleanup on the way out runs. A BaseException (``except Exception`` must not swallow it) but not
    a KeyboardInterrupt: Lightning turns that into ``sys.exit(1)`` before callers can clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended: 130, 143


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (once: a second signal
    while the first one's cleanup runs is ignored, so the cleanup finishes)."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live there only
        yield
        return

    owner = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            # a forked helper (a DataLoader worker) inherited this handler: end as it would have
            # ended without it, quietly, and let the run itself report
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_code_of(work: Callable[[], int], *, oom_hint: str, on_interrupt: Callable[[], str] | None = None) -> int:
    """``work()``'s exit code, with a user error or running out of GPU memory reported as one line
    (``error: ...``) on stderr and :data:`EXIT_USAGE`; anything else propagates with its traceback.

    Ctrl-C and SIGTERM end as one line, ``interrupted; <on_interrupt()>`` (what became of the
    output), and exit code 130 or 143; the temporary files of the write under way are removed on
    the way out, as for any failure.
    """
    import torch

    try:
        with interrupts_raise():
            return work()
    except RuyiUserError as err:
        if (stop := interrupt_behind(err)) is None:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
    except torch.OutOfMemoryError:
        print(f"error: {oom_hint}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as err:
        stop = err
    except Exception as err:
        if (stop := interrupt_behind(err)) is None:
            raise  # a bug: its traceback stays
    said = on_interrupt() if on_interrupt is not None else "nothing was written"
    print(f"interrupted; {said}", file=sys.stderr)
    return stop.exit_code


def interrupt_behind(err: BaseException) -> Interrupted | None:
    """The interrupt an error was raised while handling, if any: the same SIGTERM also ends the
    DataLoader workers, whose death torch then reports as a RuntimeError during the unwinding."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Interrupted):
            return err
        seen.add(id(err))
        err = err.__context__  # type: ignore[assignment]
    return None
