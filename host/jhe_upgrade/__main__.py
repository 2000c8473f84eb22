"""`python3 -m jhe_upgrade <step> < spec.json` (the server runs the bundled single file instead)."""
import sys

from .cli import main

sys.exit(main(sys.argv))
