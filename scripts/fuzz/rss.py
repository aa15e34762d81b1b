"""Peak memory of a fuzz run, shared by the fuzzers of this folder."""

from __future__ import annotations

import resource


def peak_rss_mib() -> int:
    """This process's peak resident set (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``: Linux keeps that
    across ``execve``, so a fuzzer started by a large process (the test suite) would report its parent's."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
