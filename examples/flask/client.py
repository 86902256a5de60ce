"""A tiny client of the example's web app (standard library only).

``python client.py signup EMAIL [--fail]`` posts a signup; ``python client.py
newsletter`` enqueues a newsletter; ``python client.py list`` prints the signups. It
waits (up to 20 s) for the server to accept connections, since it may have just been
started in the background.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

BASE = "http://127.0.0.1:8766"


def call(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        BASE + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the server is still starting


def main(argv: list[str]) -> int:
    if argv[:1] == ["signup"] and len(argv) in (2, 3):
        status, body = call("POST", "/signups", {"email": argv[1], "fail": "--fail" in argv})
        if status == 201:
            print(f"signup {body['signup']} saved, welcome job {body['job']}")
        else:
            print(f"{body['error']}: rolled back, no signup and no job ({status})")
        return 0
    if argv == ["newsletter"]:
        _, body = call("POST", "/newsletter")
        print(f"newsletter job {body['job']}")
        return 0
    if argv == ["list"]:
        _, rows = call("GET", "/signups")
        for row in rows:
            print(
                f"signup {row['id']} {row['email']}: {'welcomed' if row['welcomed'] else 'waiting'}"
            )
        print(f"{len(rows)} signup(s)")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
