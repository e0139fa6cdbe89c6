"""The writer process's first lines: the sink's ``sys.path``, then its snapsink.

:class:`~snapsink._writer.process.ProcessWriter` runs this file by its path,
``python -P .../snapsink/_writer/_start.py FD LABEL``, and not as
``python -m snapsink._writer._child``: ``-m`` looked snapsink up before the
sink's path was known (so a writer ran another installed copy, or found none
where the sink's process had put a source checkout on its path at run time),
and put the working directory first on the path (a ``queue.py`` there shadowed
the standard library in the writer only). A script named by its path adds
nothing to the path under ``-P``. This one sets the sink's path, passed in
:data:`PATH_VAR` (see :func:`~snapsink._writer.process.writer_path`), imports
the snapsink package this file belongs to, which is the one the sink's process
runs, and hands over to :func:`snapsink._writer._child.main`.
"""

# Nothing here is imported from the path before it is the sink's: sys is
# built in, os loaded at startup (so no ``from __future__`` import either).
import os
import sys

#: the environment variable that carries the sink's sys.path: each entry's
#: bytes in hex (an entry may hold any character but NUL), joined by commas
PATH_VAR = "SNAPSINK_WRITER_PATH"


def main() -> int:
    path = os.environ.pop(PATH_VAR, None)  # not for the writer's own children
    if path is not None:
        sys.path[:] = [os.fsdecode(bytes.fromhex(e)) for e in path.split(",")] if path else []
    import importlib.util

    # this very package, even where the path would find another copy first
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "snapsink",
        os.path.join(package, "__init__.py"),
        submodule_search_locations=[package],
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["snapsink"] = module
    spec.loader.exec_module(module)
    from snapsink._writer._child import main as writer_main

    return writer_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main() if len(sys.argv) > 1 else 2)
