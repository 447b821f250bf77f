"""Non-finite training losses, found without reading a GPU value every step.

A check such as ``if not torch.isfinite(loss):`` copies the loss to the host: on a GPU the CPU then
waits for the step to finish before it may queue the next, and the chip idles while Python runs.
Here the training step only *records* a device flag per step (:meth:`NonFiniteLosses.observe`); the
fused optimisers of ``torch.optim`` (``fused=True``) read the flag on the device as their
``found_inf`` and leave every weight and moment untouched for that step, as they do for
``torch.amp.GradScaler`` (the mechanism PyTorch's own mixed-precision training uses). The flags are
read on the host every ``trainer.log_every_n_steps`` steps, at the end of each training epoch and
before a checkpoint is written (:meth:`NonFiniteLosses.read`), where Lightning copies the logged
metrics to the host anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NonFiniteStep:
    """Where the first non-finite loss since the last read was seen.

    Attributes:
        global_step: the trainer's global step of that batch.
        epoch: its epoch.
        batch_idx: its index within the epoch.
        cases: the case IDs of this process's batch (``["(not recorded)"]`` when it is no longer held).
        keys: the samples' ``(epoch, index)`` keys, where the batch had them.
        loss: this process's loss at that step (``nan``, ``inf``, or finite when another process's was not).
    """

    global_step: int
    epoch: int
    batch_idx: int
    cases: list[str]
    keys: list
    loss: float


class NonFiniteLosses:
    """Device-side counters of non-finite training losses, read on the host now and then.

    Args:
        keep: how many recent batches' case IDs are held on the host, so that the first non-finite
            step since the last read can be named (at least the steps between two reads).
    """

    def __init__(self, keep: int = 64) -> None:
        self.keep = int(keep)
        self.count: torch.Tensor | None = None  # non-finite steps so far (float, on the device)
        self.first: torch.Tensor | None = None  # global step of the first since the last read (-1: none)
        self.first_loss: torch.Tensor | None = None  # this process's loss at that step
        self.seen = 0  # the count at the last read (host)
        self._recent: OrderedDict[int, tuple[int, int, list[str], list]] = OrderedDict()

    def observe(self, bad: torch.Tensor, loss: torch.Tensor, global_step: int, epoch: int, batch_idx: int,
                cases: Sequence[str] = (), keys: Sequence = ()) -> None:
        """Record one step; no host synchronisation.

        Args:
            bad: 0-d float, ``1`` where this step's loss was non-finite on any process, else ``0``
                (on the training device).
            loss: this step's 0-d loss on this process.
            global_step, epoch, batch_idx: where the step is (host integers).
            cases, keys: the batch's case IDs and sample keys, held on the host for :meth:`read`.
        """
        bad = bad.detach().float()
        if self.count is None or self.count.device != bad.device:
            self.count = torch.full((), float(self.seen), device=bad.device)
            self.first = torch.full((), -1, dtype=torch.long, device=bad.device)
            self.first_loss = torch.zeros((), device=bad.device)
        is_first = (bad > 0) & (self.first < 0)
        self.first = torch.where(is_first, torch.full_like(self.first, int(global_step)), self.first)
        self.first_loss = torch.where(is_first, loss.detach().float(), self.first_loss)
        self.count = self.count + bad
        self._recent[int(global_step)] = (int(epoch), int(batch_idx), [str(c) for c in cases], list(keys))
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)

    def read(self) -> tuple[int, NonFiniteStep | None]:
        """Copy the counters to the host (one synchronisation) and start a new interval.

        Returns:
            ``(new, where)``: how many non-finite steps were recorded since the last read, and the
            first of them (``None`` when there were none).
        """
        if self.count is None:
            return 0, None
        total, step, loss = int(self.count.item()), int(self.first.item()), float(self.first_loss.item())
        new, self.seen = total - self.seen, total
        self.first = torch.full_like(self.first, -1)
        if new <= 0:
            return 0, None
        epoch, batch_idx, cases, keys = self._recent.get(step, (-1, -1, ["(not recorded)"], []))
        return new, NonFiniteStep(step, epoch, batch_idx, cases or ["(not in the batch)"], keys, loss)

    def state(self) -> int:
        """Non-finite steps counted so far, as last read (for checkpoints)."""
        return self.seen

    def restore(self, seen: int) -> None:
        """Continue counting from ``seen`` (a resumed run)."""
        self.seen, self.count = int(seen), None
