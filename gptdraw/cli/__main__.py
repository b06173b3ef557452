"""`python -m gptdraw.cli …` (and `accelerate launch -m gptdraw.cli …`) runs the gptdraw command."""

import sys

from gptdraw.cli import main

sys.exit(main())
