"""Which localhost transport carries pool tasks: a Unix socket or shared memory?

    python benchmarks/transport.py

Round trips of a frame between two processes (a parent and a forked
child), over:

- a Unix ``socketpair`` with length-prefixed frames (what `accord.Pool` uses);
- a shared-memory buffer, the other side woken by a POSIX semaphore;
- a shared-memory buffer, the other side spinning on a flag (no wake-up at
  all, but it burns a core while it waits — shown as the floor).

Each is measured for a small frame (a tiny task) and a 100 KB one.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import socket
import struct
import sys
import time

N = 3000
HEADER = struct.Struct("<Q")
SIZE = 1 << 20


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def socket_round_trips(payload: bytes) -> float:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        try:
            while True:
                (size,) = HEADER.unpack(_recv_exactly(theirs, HEADER.size))
                theirs.sendall(HEADER.pack(size) + _recv_exactly(theirs, size))
        except EOFError:
            os._exit(0)
    theirs.close()
    frame = HEADER.pack(len(payload)) + payload
    start = time.perf_counter()
    for _ in range(N):
        ours.sendall(frame)
        (size,) = HEADER.unpack(_recv_exactly(ours, HEADER.size))
        _recv_exactly(ours, size)
    elapsed = time.perf_counter() - start
    ours.close()
    os.waitpid(pid, 0)
    return elapsed / N * 1e6


def shm_round_trips(payload: bytes, spin: bool) -> float:
    buffer = mmap.mmap(-1, SIZE)  # shared with the forked child
    ctx = multiprocessing.get_context("fork")
    request, reply = ctx.Semaphore(0), ctx.Semaphore(0)
    flag = 0  # offset of a byte: 1 = request waiting, 2 = reply waiting, 3 = stop

    def wait_for(value, semaphore):
        if spin:
            while buffer[flag] != value:
                pass
        else:
            semaphore.acquire()

    def signal(value, semaphore):
        buffer[flag] = value
        if not spin:
            semaphore.release()

    pid = os.fork()
    if pid == 0:
        while True:
            wait_for_any = buffer[flag]
            if spin:
                while (wait_for_any := buffer[flag]) not in (1, 3):
                    pass
            else:
                request.acquire()
                wait_for_any = buffer[flag]
            if wait_for_any == 3:
                os._exit(0)
            (size,) = HEADER.unpack_from(buffer, 8)
            data = buffer[16 : 16 + size]  # read the request, write the reply
            buffer[16 : 16 + size] = data
            signal(2, reply)
    start = time.perf_counter()
    for _ in range(N):
        HEADER.pack_into(buffer, 8, len(payload))
        buffer[16 : 16 + len(payload)] = payload
        signal(1, request)
        wait_for(2, reply)
        (size,) = HEADER.unpack_from(buffer, 8)
        buffer[16 : 16 + size]
    elapsed = time.perf_counter() - start
    signal(3, request)
    os.waitpid(pid, 0)
    buffer.close()
    return elapsed / N * 1e6


def main() -> None:
    print(f"Python {sys.version.split()[0]}, {N} round trips each, µs per round trip")
    print(f"{'frame':<10}{'Unix socket':>14}{'shm + semaphore':>18}{'shm + spinning':>16}")
    for label, payload in (("100 B", b"x" * 100), ("100 KB", b"x" * 100_000)):
        sock = socket_round_trips(payload)
        sem = shm_round_trips(payload, spin=False)
        spin = shm_round_trips(payload, spin=True)
        print(f"{label:<10}{sock:>14.1f}{sem:>18.1f}{spin:>16.1f}")


if __name__ == "__main__":
    main()
