"""``python -m vgkit`` (and ``torchrun -m vgkit``) runs the CLI."""

from vgkit.cli import main

main()
