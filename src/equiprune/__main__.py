"""``python -m equiprune``: the command line, as torchrun starts it (``torchrun ... -m equiprune run``)."""

import sys

from equiprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
