"""`python -m continual_trainer` is the `ctrain` command."""

from continual_trainer.cli import run

run()
