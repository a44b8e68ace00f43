"""``python -m steerinterp ...`` (and ``torchrun -m steerinterp train ...``): the command line."""

import sys

from steerinterp.app.cli import main

sys.exit(main())
