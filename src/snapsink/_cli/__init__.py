"""The ``snapsink`` command's subcommands, one module each (see :mod:`snapsink.cli`)."""
