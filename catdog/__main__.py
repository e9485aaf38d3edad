"""``python -m catdog`` is the ``catdog`` command."""

from catdog.cli import main

main()
