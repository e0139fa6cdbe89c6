"""The package's version, in a leaf module: the CLI and the stores that write
it into files import it from here, never from the package's ``__init__``
(which imports them)."""

__version__ = "0.1.0"
