"""Child process for the SIGSTOP test: holds a lock with the sync Client and reports on stdout.

    python holder_child.py URL NAMESPACE NAME

Prints `TOKEN <n>` once the lock is held, then waits (bounded) until the renewal thread
gives the lease up, prints `LOST <lease.lost> FIRED <on_lost fired> TOKEN <n>`, releases
and prints `RELEASED <bool>` (the release of a lost lease must answer False).
"""

from __future__ import annotations

import sys
import threading
import time

from lockgate import Client, Lease

WAIT_FOR_LOSS_S = 20.0


def main() -> None:
    url, namespace, name = sys.argv[1:4]
    fired = threading.Event()
    lost_leases: list[Lease] = []

    def on_lost(lease: Lease) -> None:
        lost_leases.append(lease)
        fired.set()

    client = Client(url, namespace=namespace)
    context = client.lock(name, ttl=1, wait=5, holder="child", on_lost=on_lost)
    lease = context.acquire()
    print(f"TOKEN {lease.token}", flush=True)
    deadline = time.monotonic() + WAIT_FOR_LOSS_S
    while not lease.lost and time.monotonic() < deadline:
        time.sleep(0.01)
    fired.wait(1.0)
    same = bool(lost_leases) and lost_leases[0] is lease
    print(f"LOST {lease.lost} FIRED {fired.is_set() and same} TOKEN {lease.token}", flush=True)
    released = client.release(lease)
    print(f"RELEASED {released}", flush=True)
    context.release()
    client.close()


if __name__ == "__main__":
    main()
