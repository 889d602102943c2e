"""Recognise a container from a cgroup path: pure string rules, no I/O.

The path is what /proc/PID/cgroup says; runtimes name their cgroups after
the container, so the path itself is the most useful identity to print
(`docker-<id>.scope`, `kubepods/.../<id>`, `libpod-<id>`, `lxc.payload.<name>`).
"""

from __future__ import annotations

import functools
import re

_CONTAINER = re.compile(
    r"(docker|containerd|cri-containerd|crio|libpod|kubepods|lxc\.payload|machine\.slice|"
    r"actions_job|garden)",
)
_ID = re.compile(r"([0-9a-f]{64})")


@functools.lru_cache(maxsize=4096)
def container_of(cgroup: str | None) -> str | None:
    """The cgroup path if it belongs to a container, else None (host process).

    A long hex id in the path is shortened to 12 characters, as `docker ps`
    prints it, so the column stays readable.
    """
    if not cgroup or not _CONTAINER.search(cgroup):
        return None
    return _ID.sub(lambda m: m.group(1)[:12], cgroup)
