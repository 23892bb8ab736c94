"""Network guard for tests: on PYTHONPATH, every Python process (run_all.py, papermill, the notebook
kernels) refuses connections and name lookups to anything but this machine, and records each attempt
in the file named by $POLYP_NETGUARD_LOG. The study must never need the network unless asked to
download; the end-to-end test runs under this guard and asserts the log stays empty.
"""
import errno
import os
import socket

_LOG = os.environ.get("POLYP_NETGUARD_LOG")
_LOCAL = ("localhost", "0.0.0.0", "::1", "::", "")


def _local(host) -> bool:
    host = host.decode() if isinstance(host, bytes) else str(host)
    return host in _LOCAL or host.startswith("127.") or host.endswith(".localhost")


def _refuse(what) -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"pid {os.getpid()}: {what}\n")
    raise OSError(errno.ENETUNREACH, f"network access disabled by the test guard: {what}")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _refuse(f"connect {address}")
    return _connect(self, address)


def connect_ex(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _refuse(f"connect {address}")
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _local(host):
        _refuse(f"getaddrinfo {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
