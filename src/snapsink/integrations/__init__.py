"""Adapters for simulation packages (ASE, py-pde, ...), each imported on its own.

``import snapsink`` imports none of them, and none of their packages: import
the adapter you need, e.g. ``from snapsink.integrations.pde import SnapsinkTracker``.
"""
