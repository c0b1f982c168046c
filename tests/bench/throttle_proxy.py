"""A TCP proxy that slows one direction: client -> broker bytes.

Produce requests carry the pipeline's output; fetch requests are small and
their responses (broker -> client) pass at full speed. So behind this proxy
the output is slower than the input, which is what a back-pressure
benchmark needs. Starts unthrottled; SIGUSR1 switches the limit on.

    python throttle_proxy.py --listen 9093 --upstream 9092 --bytes-per-sec 4000000
"""

import argparse
import asyncio
import signal
import time


class Bucket:
    """A token bucket shared by every client -> broker stream."""

    def __init__(self, rate):
        self.rate, self.on = rate, False
        self.tokens, self.last = 0.0, time.monotonic()

    async def take(self, n):
        if not self.on:
            return
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= n:
                self.tokens -= n
                return
            await asyncio.sleep((n - self.tokens) / self.rate)


async def pipe(reader, writer, bucket=None):
    try:
        while data := await reader.read(65536):
            if bucket:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", type=int, required=True)
    p.add_argument("--bytes-per-sec", type=float, default=4e6)
    args = p.parse_args()
    bucket = Bucket(args.bytes_per_sec)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: setattr(bucket, "on", True))

    async def serve(client_r, client_w):
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", args.upstream)
        await asyncio.gather(pipe(client_r, broker_w, bucket), pipe(broker_r, client_w))

    server = await asyncio.start_server(serve, "127.0.0.1", args.listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
