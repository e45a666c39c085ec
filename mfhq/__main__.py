"""`python -m mfhq` = `mfhq`."""

import sys

from mfhq.cli import main

sys.exit(main())
