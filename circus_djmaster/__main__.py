"""``python -m circus_djmaster``: the ``djmaster`` command (cli/main.py).

``python -m circus_djmaster worker --settings S --group G --database D`` is what every
circus watcher runs, so it takes a short path: signals are recorded before anything
else is imported (worker/early_signals.py), and the command line circus.ini gives is
read without building the CLI's parser (worker/main.py, :func:`options_from`). Any
other worker command line (``--help``, a mistake) goes to the CLI, which reports it.
"""

import sys

if sys.argv[1:2] == ["worker"]:
    # Before anything heavy is imported: see worker/early_signals.py.
    from circus_djmaster.worker import early_signals

    early_signals.install()
    from circus_djmaster.worker.main import options_from, run

    options = options_from(sys.argv[2:])
    if options is not None and __name__ == "__main__":
        sys.exit(run(*options))

from circus_djmaster.cli.main import main

if __name__ == "__main__":
    main()
