import sys

if sys.argv[1:2] == ["worker"]:
    # Before anything heavy is imported: see early_signals.
    from . import early_signals

    early_signals.install()

from .cli import main

if __name__ == "__main__":
    main()
