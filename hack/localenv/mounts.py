"""Finding and undoing mounts below a directory.

Image builds (an interrupted debootstrap, dockerd's network namespace) and the
node (CRI's sandbox /dev/shm and rootfs overlays, the kubelet's root dir and
pod volumes) leave mounts that make ``rm -rf`` fail; both clean up through here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

PROC_MOUNTS = Path("/proc/self/mounts")
# /proc/mounts escapes space, tab, newline and backslash as three octal digits.
_ESCAPE = re.compile(r"\\([0-7]{3})")


def mounts_below(mounts: str, root: Path) -> list[str]:
    """Mount points in ``mounts`` (/proc/mounts text) at or below ``root``, deepest first
    (the order to unmount them in); a point mounted twice is listed twice."""
    top = str(root).rstrip("/")
    found: list[str] = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def unmount_below(root: Path) -> list[str]:
    """Unmount everything at or below ``root`` (lazily when busy); returns what is left."""
    for point in mounts_below(PROC_MOUNTS.read_text(), root):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return mounts_below(PROC_MOUNTS.read_text(), root)
