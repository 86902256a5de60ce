"""Imported by a hostile job handler: its import raises."""

raise RuntimeError("this module is broken at import time")
