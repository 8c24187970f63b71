"""`python -m sr_augment.cli ...` runs the command line (as `sr-augment` and `python -m sr_augment` do)."""

import sys

from sr_augment.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
