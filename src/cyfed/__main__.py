"""`python -m cyfed`: the command line (see cyfed.cli)."""
import sys

from cyfed.cli import main

sys.exit(main())
