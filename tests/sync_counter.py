"""Count the calls that make a CUDA device wait for the host (or the host for the device), on any device.

On a GPU these calls block the CPU until every queued kernel has run: reading a value back
(``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``.tolist()``, ``.numpy()``, ``.cpu()``), or an
operation whose output shape depends on the data (``nonzero``, boolean-mask indexing,
``masked_select``, ``unique``). On a CPU the same calls cost nothing, which is why a CPU test has to
count them rather than time them::

    from tests.sync_counter import count_host_syncs

    with count_host_syncs() as syncs:
        batch = datamodule.on_after_batch_transfer(batch, 0)
    assert syncs.count == 0, syncs.calls

Two layers are watched, so that a sync is seen wherever it is written:

- Python-level calls (a :class:`torch.overrides.TorchFunctionMode`): ``Tensor.item``, ``Tensor.tolist``,
  ``Tensor.cpu``, ``Tensor.numpy``, ``Tensor.__bool__`` (also ``if t:``), ``Tensor.__int__``,
  ``Tensor.__float__``, ``Tensor.__index__``, ``Tensor.nonzero``/``torch.nonzero``, ``torch.argwhere``,
  ``torch.equal``, ``torch.masked_select``, ``torch.unique``, and ``t[mask]`` / ``t[mask] = v`` with a
  boolean index.
- ATen operators (a :class:`torch.utils._python_dispatch.TorchDispatchMode`), for syncs inside library
  functions, which the function mode does not look into (while it handles ``F.interpolate`` it is off):
  ``aten._local_scalar_dense`` (every read of one value), ``aten.nonzero``, ``aten.masked_select``,
  ``aten.unique*``, ``aten.equal``, ``aten.index``/``index_put`` with a boolean index,
  ``aten.repeat_interleave`` without ``output_size``, and copies from a non-CPU device to the CPU.
  A call already counted at the Python level is not counted again below.

Not counted: ``.to("cpu")`` (on a CPU test it cannot be told from ``.to(x.device)``) and syncs that
happen inside a C++ kernel without an operator call. Meta tensors have no values, so on the ``meta``
device every read back also raises: running code on meta tensors exercises its non-CPU branches on a
machine without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

#: Python-level functions that read device values on the host (or wait for a data-dependent shape)
SYNCING_FUNCTIONS = {
    torch.Tensor.item: "Tensor.item",
    torch.Tensor.tolist: "Tensor.tolist",
    torch.Tensor.cpu: "Tensor.cpu",
    torch.Tensor.numpy: "Tensor.numpy",
    torch.Tensor.__bool__: "Tensor.__bool__",
    torch.Tensor.__int__: "Tensor.__int__",
    torch.Tensor.__float__: "Tensor.__float__",
    torch.Tensor.__index__: "Tensor.__index__",
    torch.Tensor.nonzero: "Tensor.nonzero",
    torch.nonzero: "torch.nonzero",
    torch.argwhere: "torch.argwhere",
    torch.Tensor.argwhere: "Tensor.argwhere",
    torch.equal: "torch.equal",
    torch.Tensor.equal: "Tensor.equal",
    torch.masked_select: "torch.masked_select",
    torch.Tensor.masked_select: "Tensor.masked_select",
    torch.unique: "torch.unique",
    torch.Tensor.unique: "Tensor.unique",
}
#: ATen operators (overload packets, by name) whose output shape or value needs the data on the host
SYNCING_OPERATORS = (
    "_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive",
    "equal",
)


def _boolean_index(index) -> bool:
    """Whether a ``__getitem__``/``index`` index holds a boolean (or uint8 mask) tensor."""
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch's own package and this module."""
    import os
    import sys

    torch_dir = os.path.dirname(torch.__file__)
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(torch_dir) and path != __file__:
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class HostSyncs:
    """What :func:`count_host_syncs` saw.

    Attributes:
        calls: the name of each syncing call, in order (e.g. ``["Tensor.__bool__", "aten.nonzero"]``).
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        #: for each call, the first frame outside torch that made it (``"path/to/file.py:123"``)
        self.sites: list[str] = []

    def add(self, name: str) -> None:
        """Record one syncing call and where it was made."""
        self.calls.append(name)
        self.sites.append(_caller())

    @property
    def count(self) -> int:
        """The number of syncing calls."""
        return len(self.calls)

    def __repr__(self) -> str:
        return f"HostSyncs(count={self.count}, calls={self.calls})"


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, syncs: HostSyncs) -> None:
        super().__init__()
        self.syncs = syncs
        self.depth = 0  # > 0 while a counted call runs: its own operators are not counted again

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = SYNCING_FUNCTIONS.get(func)
        if name is None and func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and _boolean_index(args[1]):
            name = f"Tensor.{func.__name__}[bool mask]"
        if name is None:
            return func(*args, **kwargs)
        self.syncs.add(name)
        self.depth += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.depth -= 1


class _OperatorCounter(TorchDispatchMode):
    def __init__(self, syncs: HostSyncs, functions: _FunctionCounter) -> None:
        super().__init__()
        self.syncs, self.functions = syncs, functions

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.functions.depth and self._syncs(func, args, kwargs):
            self.syncs.add(f"aten.{func.overloadpacket.__name__}")
        return func(*args, **kwargs)

    @staticmethod
    def _syncs(func, args, kwargs) -> bool:
        name = func.overloadpacket.__name__
        if name in SYNCING_OPERATORS:
            return True
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            return _boolean_index(args[1])
        if name == "repeat_interleave":  # tensor repeats: the output length is their sum
            return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None
        if name in ("_to_copy", "copy_"):  # a device -> host copy
            source = args[1] if name == "copy_" else args[0]
            target = args[0].device if name == "copy_" else kwargs.get("device")
            return (isinstance(source, torch.Tensor) and source.device.type not in ("cpu", "meta")
                    and target is not None and torch.device(target).type == "cpu")
        return False


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncs]:
    """Count the host-syncing calls made inside the ``with`` block (see the module docstring).

    Yields:
        a :class:`HostSyncs`; its ``count`` and ``calls`` are complete once the block has ended.
    """
    syncs = HostSyncs()
    functions = _FunctionCounter(syncs)
    with functions, _OperatorCounter(syncs, functions):
        yield syncs
