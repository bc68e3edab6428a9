"""``python -m grounding.data generate|convert|publish|verify|describe`` (see :mod:`grounding.data.cli`)."""

import sys

from .cli import main

sys.exit(main())
