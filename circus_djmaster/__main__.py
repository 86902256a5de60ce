"""``python -m circus_djmaster``: the ``djmaster`` command (cli/main.py).

Three command lines that circus.ini gives take a short path, without the CLI's parser:

* ``worker --settings S --group G --database D``, what every exec-mode watcher runs:
  signals are recorded before anything else is imported (worker/early_signals.py), and
  the command line is read without argparse (worker/main.py, :func:`options_from`). Any
  other worker command line (``--help``, a mistake) goes to the CLI, which reports it;
* ``launch --settings S --group G --database D --wait T``, what a fork-mode watcher runs:
  a launcher, which imports only the standard library and the package's contracts
  (worker/launcher.py);
* ``preloader --settings S``, the preloader of fork-mode workers (worker/preloader.py).
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
elif sys.argv[1:2] == ["launch"] and __name__ == "__main__":
    from circus_djmaster.worker import launcher

    sys.exit(launcher.main(sys.argv[2:]))
elif sys.argv[1:3] == ["preloader", "--settings"] and len(sys.argv) == 4:
    from circus_djmaster.worker import early_signals

    early_signals.install()
    if __name__ == "__main__":
        from circus_djmaster.worker import preloader

        sys.exit(preloader.run(sys.argv[3]))

from circus_djmaster.cli.main import main

if __name__ == "__main__":
    main()
