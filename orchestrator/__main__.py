"""`python -m orchestrator` is the same as the `rnn-orch` command."""

import sys

from orchestrator.cli import main

sys.exit(main())
