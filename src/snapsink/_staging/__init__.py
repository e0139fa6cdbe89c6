"""Staging: capturing a frame so the caller may reuse its arrays at once.

``host``: reusable host slots for numpy arrays. ``device``: CUDA copy streams,
pinned host buffers and events for device arrays (with a CPU emulation).
"""
