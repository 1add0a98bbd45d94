"""`python -m dpjax.distributed -n N -- COMMAND...`: N processes of one run on this machine."""

import sys

from dpjax.distributed._launch import main

sys.exit(main())
