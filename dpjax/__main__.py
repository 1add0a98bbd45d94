"""`python -m dpjax ...` runs the command-line interface."""

import sys

from dpjax.training import main

sys.exit(main())
