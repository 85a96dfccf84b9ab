"""``python -m liftshift.ctl``: the same as the ``liftshift`` command."""

import sys

from .main import main

sys.exit(main())
