"""Stores: where frames end up. One module per format."""
