"""``python -m credo.cli`` (what ``torchrun -m credo.cli ...`` runs): the ``credo`` command."""

import sys

from credo.cli import main

sys.exit(main())
