"""`python -m gptdraw.cli …` (and `accelerate launch -m gptdraw.cli …`) runs the gptdraw command."""

import sys

from . import main

sys.exit(main())
