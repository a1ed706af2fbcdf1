"""`python -m gateway.cli`: the same as `tongban`."""

import sys

from gateway.cli import main

sys.exit(main())
