"""dask worker plugins of :func:`starloc.cluster.local_cluster` (imports ``distributed``:
import this module only where a cluster is asked for)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class IgnoreCtrlC(WorkerPlugin):
    """The worker ignores SIGINT: Ctrl-C is the client process's to handle. Workers started
    inside ``cluster._ctrl_c_ignored`` inherit that, but one that its nanny starts again later
    (after a crash, or running out of memory) does not, and printed its own traceback on the
    next Ctrl-C."""

    name = "starloc-ignore-ctrl-c"

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            signal.signal(signal.SIGINT, signal.SIG_IGN)
