"""Which addresses a process tree listens on: the socket checks of the lock-down tests.

Read through psutil (``/proc``), the same information ``ss -ltnp`` shows: TCP sockets in
LISTEN state and bound UDP sockets, of a process and all its descendants.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import psutil

#: Addresses only this machine can reach: IPv4 and IPv6 loopback, and IPv4 loopback as
#: an IPv6 socket shows it (gRPC binds that way).
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


@dataclass(frozen=True)
class Listener:
    """One listening socket and the process that holds it."""

    pid: int
    process: str
    ip: str
    port: int
    kind: str  # tcp or udp

    def __str__(self) -> str:
        return f"{self.kind} {self.ip}:{self.port} ({self.process}, pid {self.pid})"


def _name(proc: psutil.Process) -> str:
    """Ray renames its workers (``ray::ServeReplica:...``); other processes by their program."""
    cmdline = proc.cmdline()
    if not cmdline:
        return proc.name()
    if cmdline[0].startswith("ray::"):
        return cmdline[0].strip()
    return " ".join(part.rsplit("/", 1)[-1] for part in cmdline[:4])[:120]


def tree_listeners(root_pid: int) -> list[Listener]:
    """Every listening socket of ``root_pid`` and its descendants (processes that end meanwhile are skipped)."""
    root = psutil.Process(root_pid)
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = _name(proc)
            for conn in proc.net_connections(kind="inet"):
                tcp = conn.type == socket.SOCK_STREAM
                if (tcp and conn.status == psutil.CONN_LISTEN) or (not tcp and not conn.raddr):
                    found.append(Listener(proc.pid, name, conn.laddr.ip, conn.laddr.port, "tcp" if tcp else "udp"))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def exposed(listeners: list[Listener]) -> list[str]:
    """The listeners another machine could reach (anything but loopback), for an assertion message."""
    return [str(item) for item in listeners if item.ip not in LOOPBACK]
