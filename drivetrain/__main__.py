"""``python -m drivetrain``: the same as the ``drivetrain`` command."""

from drivetrain.cli import main

main()
