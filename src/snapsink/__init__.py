"""snapsink: stream simulation snapshots, GPU or CPU, into storage without stalling.

>>> import snapsink
>>> async with snapsink.Sink(snapsink.NpyDirectory("run")) as sink:  # doctest: +SKIP
...     await sink.write({"positions": x, "energy": e}, step=i, time=t)
"""

from typing import TYPE_CHECKING

from ._channeltypes import SinkStatistics as SinkStatistics
from ._copy import copy as copy
from ._errors import ClosedSinkError as ClosedSinkError
from ._errors import ConfigError as ConfigError
from ._errors import DeviceError as DeviceError
from ._errors import DTypeError as DTypeError
from ._errors import FormatError as FormatError
from ._errors import SchemaError as SchemaError
from ._errors import SnapsinkError as SnapsinkError
from ._errors import SpillError as SpillError
from ._errors import StoreExistsError as StoreExistsError
from ._errors import StoreLockedError as StoreLockedError
from ._errors import StoreNotFoundError as StoreNotFoundError
from ._errors import StoreStateError as StoreStateError
from ._errors import WouldBlock as WouldBlock
from ._errors import WriterError as WriterError
from ._errors import WrongThreadError as WrongThreadError
from ._reader import groups as groups
from ._reader import open as open
from ._recorder import Recorder as Recorder
from ._recorder import SyncRecorder as SyncRecorder
from ._routes import Route as Route
from ._schema import Batch as Batch
from ._schema import Field as Field
from ._schema import Frame as Frame
from ._schema import Schema as Schema
from ._sink import Sink as Sink
from ._spill import Spill as Spill
from ._store import AsyncStore as AsyncStore
from ._store import Resume as Resume
from ._store import Store as Store
from ._store import StoreSpec as StoreSpec
from ._sync import SyncSink as SyncSink
from ._systems import Systems as Systems
from ._systems import by_system as by_system
from ._systems import converged as converged
from ._trajectory import FieldView as FieldView
from ._trajectory import Trajectory as Trajectory
from .schedule import Schedule as Schedule
from .schedule import every as every
from .schedule import once as once
from .schedule import when as when
from .stores.gpu import GPUBuffer as GPUBuffer
from .stores.memory import HostMemory as HostMemory
from .stores.npy import NpyDirectory as NpyDirectory

if TYPE_CHECKING:  # loaded on first use: see __getattr__
    from .stores.hdf5 import HDF5Store as HDF5Store
    from .stores.zarr import ZarrStore as ZarrStore

from ._version import __version__ as __version__

__all__ = [
    "AsyncStore",
    "Batch",
    "ClosedSinkError",
    "ConfigError",
    "DTypeError",
    "DeviceError",
    "Field",
    "FieldView",
    "FormatError",
    "Frame",
    "GPUBuffer",
    "HDF5Store",
    "HostMemory",
    "NpyDirectory",
    "Recorder",
    "Resume",
    "Route",
    "Schedule",
    "Schema",
    "SchemaError",
    "Sink",
    "SinkStatistics",
    "SnapsinkError",
    "Spill",
    "SpillError",
    "Store",
    "StoreExistsError",
    "StoreLockedError",
    "StoreNotFoundError",
    "StoreSpec",
    "StoreStateError",
    "SyncRecorder",
    "SyncSink",
    "Systems",
    "Trajectory",
    "WouldBlock",
    "WriterError",
    "WrongThreadError",
    "ZarrStore",
    "__version__",
    "by_system",
    "converged",
    "copy",
    "every",
    "groups",
    "once",
    "open",
    "when",
]

# The public names are the package's own: reprs, tracebacks, pickles and the
# docs show snapsink.Sink, not snapsink._sink.Sink.
for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type) or callable(_obj):
        _obj.__module__ = __name__
del _name, _obj
# Submodules bound as attributes by the imports above are not part of the API
# (``import snapsink.stores.zarr`` still works).
del schedule, stores, TYPE_CHECKING  # type: ignore[name-defined]  # noqa: F821


def __getattr__(name: str) -> object:
    # ZarrStore loads zarr (about half of snapsink's import time): only on use.
    if name == "ZarrStore":
        from .stores.zarr import ZarrStore

        ZarrStore.__module__ = __name__
        globals()["ZarrStore"] = ZarrStore
        return ZarrStore
    if name == "HDF5Store":  # h5py itself loads only when a store opens
        from .stores.hdf5 import HDF5Store

        HDF5Store.__module__ = __name__
        globals()["HDF5Store"] = HDF5Store
        return HDF5Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"HDF5Store", "ZarrStore"})
