"""`python -m trainer` is the `ctrain` command."""

from trainer.cli import run

run()
