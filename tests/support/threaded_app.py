"""An application that starts a thread when it is imported: a preloader must refuse to
fork it (fork-mode tests)."""

from __future__ import annotations

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), name="app-poller", daemon=True).start()
