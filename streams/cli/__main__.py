"""`python -m streams.cli`: the same entry point as the `sagestream` script."""

import sys

from streams.cli.main import main

sys.exit(main())
