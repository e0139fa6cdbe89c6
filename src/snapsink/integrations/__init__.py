"""Adapters that attach snapsink to a simulation package in one call.

Each adapter is a submodule, imported on its own; neither ``import snapsink``
nor ``import snapsink.integrations`` loads a simulation package:

- :mod:`snapsink.integrations.ase`: ``attach(dyn, target)`` records an ASE
  dynamics object (molecular dynamics or an optimizer) through its observers;
- :mod:`snapsink.integrations.pde`: ``SnapsinkTracker(target)`` records a
  py-pde simulation as a tracker of ``solve(..., tracker=[...])``.
"""
