import sys

if sys.argv[1:2] == ["worker"]:
    # Before anything heavy is imported: see early_signals.
    from circus_djmaster.worker import early_signals

    early_signals.install()

from circus_djmaster.cli.main import main

if __name__ == "__main__":
    main()
