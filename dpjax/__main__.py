"""`python -m dpjax ...` runs the command-line interface."""

import sys

from dpjax._cli import main

sys.exit(main())
