"""`python -m operate`: the same as `.venv/bin/orderstream`."""

import sys

from operate.cli import main

sys.exit(main())
