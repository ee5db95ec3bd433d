"""Search from the command line: ``python -m zoo.models.dupmae MODEL CORPUS "query" [-k 10]``."""

import sys

from zoo.models.dupmae.search import main

sys.exit(main())
