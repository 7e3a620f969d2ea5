"""The ``cyfed`` command line (``cyfed`` / ``python -m cyfed``), kept apart from the library.

`main` (in ``app.py``, with the ``demo``, ``info`` and ``plot`` subcommands)
builds the parser and dispatches; ``train.py`` is ``cyfed train`` and
``config.py`` the TOML config it reads; ``commands.py`` holds ``partition``,
``evaluate`` and ``predict``; ``progress.py`` the progress bar and per-rank
logging; ``plotting.py`` loads and draws training histories.  The library
modules never import this package.
"""
from cyfed.cli.app import main

__all__ = ["main"]
