"""Imported by a hostile job handler: exits the interpreter at import time."""

import sys

sys.exit(3)
