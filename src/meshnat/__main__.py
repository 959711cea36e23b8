"""`python -m meshnat`: the same as the `meshnat` command."""

import sys

from meshnat.cli import main

sys.exit(main())
