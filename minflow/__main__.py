"""``python -m minflow COMMAND ...``: the command line (`minflow.cli`)."""

from .cli import main

main()
