#!/usr/bin/python3
"""A FUSE filesystem whose statfs never returns: the "dead NFS mount" of the agent's tests.

getattr and readdir answer (so runc can bind-mount it), statfs blocks until the process is
killed. Usage: hung_fs.py MOUNTPOINT (foreground; unmount with fusermount3 -u -z).
Needs Debian's python3-fusepy and fuse3.
"""
import errno
import sys
import threading

try:  # Debian names the module fusepy
    from fusepy import FUSE, FuseOSError, Operations
except ImportError:
    from fuse import FUSE, FuseOSError, Operations


class Hung(Operations):
    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": 0o40755, "st_nlink": 2}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", ".."]

    def statfs(self, path):
        threading.Event().wait()  # forever


if __name__ == "__main__":
    FUSE(Hung(), sys.argv[1], foreground=True, nothreads=False, allow_other=True)
