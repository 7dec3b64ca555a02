"""The user-error family: what a user can fix from the message alone.

Entry points (CLI, ComfyUI, benchmarks) map a :class:`RuyiUserError` to one line and exit code 2.
Anything else that escapes is a bug in ruyi and keeps its traceback (exit 1).

Each class also derives from the builtin exception a Python caller would expect (``ValueError``
for a bad value, ``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USAGE = 2  # what an entry point returns for a user error


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


def exit_code_of(work: Callable[[], int], *, oom_hint: str) -> int:
    """``work()``'s exit code, with a user error or running out of GPU memory reported as one line
    (``error: ...``) on stderr and :data:`EXIT_USAGE`; anything else propagates with its traceback."""
    import torch

    try:
        return work()
    except RuyiUserError as err:
        print(f"error: {err}", file=sys.stderr)
    except torch.OutOfMemoryError:
        print(f"error: {oom_hint}", file=sys.stderr)
    return EXIT_USAGE
