"""`python -m sr_augment ...` runs the command line, so a launcher that starts modules can start it:
`accelerate launch --num_processes N -m sr_augment warm PATH ...` warms on N devices at once."""

import sys

from sr_augment.cli import main

if __name__ == "__main__":
    sys.exit(main())
