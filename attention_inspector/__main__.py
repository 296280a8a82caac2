"""`python -m attention_inspector [options]`: the command line of main.py, under the package's name."""

from __future__ import annotations

import sys

from main import main

if __name__ == "__main__":
    sys.exit(main())
