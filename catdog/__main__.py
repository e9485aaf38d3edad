"""``python -m catdog`` is the ``catdog`` command.

An entry point, not a module anything imports: it names the CLI (the top layer) instead of
importing it, so the bottom layer (``catdog.settings``, ``catdog.images``, ...) keeps no arrow
pointing up at the command line.
"""

import importlib

importlib.import_module("catdog.cli").main()
