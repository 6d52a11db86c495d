"""Run the ``relay`` command with ``python -m relay``."""

from relay.cli import main

main()
