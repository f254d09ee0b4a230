"""The `sainet` command line: one module per command group, each command thin.

A command parses its options (types that reject bad values: exit 2, one line), calls one library
function and prints. `sainet.cli._app` holds the app, the exit codes and the shared option types;
add a command by writing it in the module of its group (or a new module imported below).
"""

from sainet.cli import bench, data, demo, plan, preview, train  # noqa: F401 - each module registers its commands
from sainet.cli._app import EXIT_CODES, app, main

__all__ = ["app", "main", "EXIT_CODES"]
