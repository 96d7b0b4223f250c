"""Ending a command that runs on several processes (`accelerate launch`, torchrun) once all is written.

torch's gloo process group can hang or abort in its destructor at interpreter teardown: it joins a
worker thread that waits for the GIL the destructor holds (one CI run of kcdp-train hung there; one of
kcdp-knowledge aborted with "terminate called without an active exception" after its report). Such
commands leave through `leave`, which skips the teardown; a single process returns as usual.
"""

from __future__ import annotations

import os
import sys


def leave(code: int, processes: int) -> int:
    """`code` as the exit status: returned when alone, else the process exits here without teardown
    (call it only when every file is written and closed)."""
    if processes > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
