"""Who runs a sink's consumer: a writer process (disk stores) or a thread.

- :mod:`.process`: the sink's side of a writer process (its start, the
  control channel and the proxy thread that reads the writer's replies, close);
- :mod:`.publish`: the channel whose frames go to it (shared-memory slots,
  the publication ring);
- :mod:`._child`: the writer process itself;
- :mod:`._shm`, :mod:`._wire`: the shared memory and the control channel.

The thread writer is the consumer in :mod:`snapsink._sink`.
"""
