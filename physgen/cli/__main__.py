"""``python -m physgen.cli`` (the same as the ``physgen`` console script)."""

from physgen.cli import main

main()
