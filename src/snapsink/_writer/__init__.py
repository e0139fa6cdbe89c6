"""Who runs a sink's consumer: a writer process (disk stores) or a thread.

- :mod:`.process`: the sink's side of a writer process (shared-memory slots,
  the publication ring, the control channel);
- :mod:`._child`: the writer process itself;
- :mod:`._shm`, :mod:`._wire`: the shared memory and the control channel.

The thread writer is the consumer in :mod:`snapsink._sink`.
"""
