"""Allow `python -m tracer`, which is what sudo sees when no console script is on root's PATH."""

from tracer.cli.app import main

main()
