"""An open-loop HTTP load generator, run as its own process by the benchmarks (`api_load.py`).

Each request is due at a fixed slot (`rate` per second over `seconds`), whatever the earlier
requests did; its latency counts from that slot, so queueing in a slow server shows instead of
hiding behind a waiting client. It speaks bare HTTP/1.1 over keep-alive connections and reads
each body without parsing it, so on a 2-core machine it leaves the server its share: a client
library that parses every 80 kB answer cannot keep up 500 requests/s here.

    python benchmarks/http_load.py URL RATE SECONDS CONNECTIONS API_KEY   # prints one JSON object
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


class Load:
    def __init__(self, url: str, key: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nX-API-Key: {key}\r\n\r\n".encode()
        self.latencies: list[float] = []
        self.errors = 0

    async def fetch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        return int(lines[0].split(b" ", 2)[1])

    async def connection(self, slots: list[float]) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        for _ in range(3):  # warm the connection and the route's caches
            await self.fetch(reader, writer)
        for due in slots:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                if await self.fetch(reader, writer) != 200:
                    self.errors += 1
            except (OSError, asyncio.IncompleteReadError):
                self.errors += 1
                reader, writer = await asyncio.open_connection(self.host, self.port)
            self.latencies.append(time.perf_counter() - due)
        writer.close()

    async def run(self, rate: float, seconds: float, connections: int) -> float:
        start = time.perf_counter() + 0.5
        total = int(rate * seconds)
        slots = [[start + i / rate for i in range(c, total, connections)] for c in range(connections)]
        await asyncio.gather(*(self.connection(s) for s in slots))
        return time.perf_counter() - start


def main() -> None:
    url, rate, seconds, connections, key = sys.argv[1:6]
    load = Load(url, key)
    elapsed = asyncio.run(load.run(float(rate), float(seconds), int(connections)))
    print(json.dumps({"latencies": load.latencies, "errors": load.errors, "elapsed": elapsed}))


if __name__ == "__main__":
    main()
