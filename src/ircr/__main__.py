"""``python -m ircr`` runs the command-line interface."""

import sys

from ircr.cli.main import main

sys.exit(main())
