"""What makes the whole-job benchmark Lambda-shaped (`make bench-lambda`): a CPU limit on
the function's process, and network distance to S3 and SAP.

- `CpuLimit`: a cgroup with a CPU quota (0.6 of one core: what 1024 MB buys on Lambda).
  cgroup v2's `cpu.max` where the machine has it, else cgroup v1's `cpu.cfs_quota_us`
  (this project's machines have v1); a machine with neither refuses the run.
- `LatencyRelay`: a TCP relay on loopback that holds every chunk for half the round trip
  in each direction, with no bandwidth limit (what a distant S3 or SAP server adds to each
  exchange; TCP's own window is the loopback's).
"""
import asyncio
import logging
import os
import socket
import threading

V2_ROOT = "/sys/fs/cgroup"
V1_ROOT = "/sys/fs/cgroup/cpu"


class CpuLimit:
    """A cgroup holding at most `cores` of CPU; `wrap(command)` runs a command inside it."""

    def __init__(self, cores: float, name: str = "maestro-relay-bench"):
        period = 100_000
        quota = int(cores * period)
        if os.path.exists(os.path.join(V2_ROOT, "cgroup.controllers")):
            self.path = os.path.join(V2_ROOT, name)
            os.makedirs(self.path, exist_ok=True)
            with open(os.path.join(self.path, "cpu.max"), "w") as handle:
                handle.write(f"{quota} {period}\n")
            self.how = f"cgroup v2 cpu.max {quota} {period}"
        elif os.path.isdir(V1_ROOT):
            self.path = os.path.join(V1_ROOT, name)
            os.makedirs(self.path, exist_ok=True)
            with open(os.path.join(self.path, "cpu.cfs_period_us"), "w") as handle:
                handle.write(str(period))
            with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as handle:
                handle.write(str(quota))
            self.how = f"cgroup v1 cpu.cfs_quota_us {quota} / cpu.cfs_period_us {period}"
        else:
            raise SystemExit("bench-lambda: no writable cpu cgroup (v2 cpu.max or v1 cpu.cfs_quota_us) on this machine")
        self.procs = os.path.join(self.path, "cgroup.procs")

    def wrap(self, command: list) -> list:
        """`command`, run by a shell that first moves itself into the cgroup and then
        becomes the command (same pid: its /proc figures are the command's)."""
        return ["/bin/sh", "-c", f'echo $$ > {self.procs} && exec "$@"', "sh", *command]


class LatencyRelay:
    """Listens on a free loopback port and forwards to `upstream_port`, each direction
    late by `rtt_ms / 2`."""

    def __init__(self, upstream_port: int, rtt_ms: float):
        self.upstream_port = upstream_port
        self.one_way = rtt_ms / 2000.0
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        # Connections still open when the benchmark exits are cut mid-copy: not news.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(10):
            raise SystemExit(f"bench-lambda: the relay to port {upstream_port} did not start")

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def main():
            await asyncio.start_server(self._connection, "127.0.0.1", self.port)
            started.set()

        self.loop.run_until_complete(main())
        self.loop.run_forever()

    async def _connection(self, client_reader, client_writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer),
            return_exceptions=True,
        )

    async def _pipe(self, reader, writer) -> None:
        """Every chunk read is written `one_way` later, in order."""
        queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver():
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                writer.close()

        delivering = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(256 * 1024)
                await queue.put((loop.time() + self.one_way, data or None))
                if not data:
                    break
        except (ConnectionError, OSError):
            await queue.put((loop.time(), None))
        await delivering
