"""``python -m agegroup predict PATH...``: the command ``agegroup`` (``agegroup.cli``)."""

import sys

from agegroup.cli import main

sys.exit(main())
