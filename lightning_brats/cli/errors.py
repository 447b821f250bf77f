"""How every command reports bad input: one line naming the file and the problem, no traceback.

A :class:`~lightning_brats.data.readers.DataError` (a dataset file or folder) or a
:class:`~lightning_brats.training.checkpoints.CheckpointError` (a checkpoint file) already names the path
and says what is wrong with it; the frames above it (Lightning's ``Trainer.fit`` calling
``prepare_data``, nibabel or torch failing on a truncated file) tell a user nothing more. So the
Hydra entry points wrap their task function in :func:`reports_bad_input`, which re-raises such an
error as a :class:`BadInput`, a Hydra ``CompactHydraException``: Hydra prints compact exceptions
as their message alone (as it prints an unknown ``model=`` or key), then exits with status 1.

The same for a folder or disk the command cannot write to (a ``PermissionError``, a full disk, a
read-only file system, a quota): the message names the path (``atomic_save`` and the file locks
keep the ``OSError``'s file name), and what was written before stays as it was.

For the whole traceback (the original error, its cause, e.g. nibabel's exception, and every frame)
set ``HYDRA_FULL_ERROR=1``, as Hydra's own hint under the message says; Hydra also re-raises in
full under a debugger. In-process callers (``train()``, ``predict()``, ``evaluate()``, the tests)
still get the original ``DataError`` / ``CheckpointError``: only the command-line entry point wraps.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import CompactHydraException

from lightning_brats.data.readers import DataError
from lightning_brats.training.checkpoints import CheckpointError
from lightning_brats.training.hardware import OutOfDeviceMemory

#: Errors that name a bad file or folder given to a command (both ``ValueError`` subclasses), and
#: the device running out of memory (its message names the settings to lower).
BAD_INPUT = (DataError, CheckpointError, OutOfDeviceMemory)

#: ``OSError`` numbers of an output the command cannot write: the machine's problem, not the program's.
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT)

T = TypeVar("T")


class BadInput(CompactHydraException):
    """A :data:`BAD_INPUT` error on its way out of a command: Hydra prints its message only.

    The message is the original's, prefixed with its class as a traceback would write it
    (``lightning_brats.data.readers.base.DataError: PATH: cannot read NIfTI (...)``); the
    original is the ``__cause__``.
    """


def reports_bad_input(task: Callable[..., T]) -> Callable[..., T]:
    """Decorate a Hydra task function (below ``@hydra.main``) so that bad input ends in one message.

    Hydra finds the config folder and the calling module through ``__wrapped__``, so the decorated
    function behaves as the original for Hydra.

    Raises:
        BadInput: the task raised a :data:`BAD_INPUT` error, or an ``OSError`` of :data:`UNWRITABLE`
            naming a path (chained to it, with its message).
    """

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except BAD_INPUT as exc:
            kind = type(exc)
            raise BadInput(f"{kind.__module__}.{kind.__qualname__}: {exc}") from exc
        except OSError as exc:
            if exc.errno not in UNWRITABLE or not (exc.filename or "/" in str(exc)):
                raise
            raise BadInput(f"{type(exc).__qualname__}: {exc}") from exc

    return wrapper
