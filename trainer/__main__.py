"""`python -m trainer` is the `ctrain` command."""

import sys

from trainer.cli import main

sys.exit(main())
