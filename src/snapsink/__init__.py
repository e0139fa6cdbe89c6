"""snapsink: stream simulation snapshots, GPU or CPU, into storage without stalling.

>>> import snapsink
>>> async with snapsink.Sink(snapsink.NpyDirectory("run")) as sink:  # doctest: +SKIP
...     await sink.write({"positions": x, "energy": e}, step=i, time=t)
"""

from __future__ import annotations

from ._channel import SinkStatistics as SinkStatistics
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
from ._errors import WouldBlock as WouldBlock
from ._errors import WriterError as WriterError
from ._errors import WrongThreadError as WrongThreadError
from ._reader import open as open
from ._recorder import Recorder as Recorder
from ._recorder import Route as Route
from ._recorder import SyncRecorder as SyncRecorder
from ._schema import Batch as Batch
from ._schema import Field as Field
from ._schema import Frame as Frame
from ._schema import Schema as Schema
from ._sink import Sink as Sink
from ._spill import Spill as Spill
from ._store import Resume as Resume
from ._store import Store as Store
from ._store import StoreSpec as StoreSpec
from ._sync import SyncSink as SyncSink
from ._trajectory import FieldView as FieldView
from ._trajectory import Trajectory as Trajectory
from .schedule import Schedule as Schedule
from .schedule import every as every
from .schedule import once as once
from .schedule import when as when
from .writers.gpu import GPUBuffer as GPUBuffer
from .writers.memory import HostMemory as HostMemory
from .writers.npy import NpyDirectory as NpyDirectory
from .writers.zarr import ZarrStore as ZarrStore

__version__ = "0.1.0"

__all__ = [
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
    "SyncRecorder",
    "SyncSink",
    "Trajectory",
    "WouldBlock",
    "WriterError",
    "WrongThreadError",
    "ZarrStore",
    "__version__",
    "every",
    "once",
    "open",
    "when",
]
