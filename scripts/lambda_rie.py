"""A minimal AWS Lambda Runtime API for running the real function binaries locally.

Serves one event to the binary (started with AWS_LAMBDA_RUNTIME_API pointing here), waits
for its response or error, prints it as JSON on stdout and stops the binary.
    python scripts/lambda_rie.py EVENT_JSON_FILE -- BINARY
The invocation's deadline is LAMBDA_RIE_TIMEOUT_S seconds away (default 300), as a
function's timeout sets it.
Exit status: 0 for a response, 1 for a function error or a failed start.
"""
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"


def run(event: bytes, command: list, timeout_s: float = 300.0, timing: dict = None, quiet: bool = False,
        log=None) -> tuple:
    """Returns (kind, body); `timing`, when given, gets `answered_after_s`: process start to
    the function's answer (a cold start plus one invocation), `vmhwm_kib`: the function
    process's peak RSS, and `cpu_s`: the CPU seconds it used, both read before it is stopped. `log`, a file, gets the
    function's stdout and stderr."""
    request_id = str(uuid.uuid4())
    done = threading.Event()
    outcome = {}
    served = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle(self):
            # The function is stopped while its next poll is held open: not an error.
            try:
                super().handle()
            except (ConnectionResetError, BrokenPipeError):
                pass

        def _reply(self, status: int, body: bytes = b"{}", headers: dict = None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != f"{PREFIX}/invocation/next":
                return self._reply(404)
            if served.is_set():
                # One event per run: hold the next poll until the binary is stopped.
                done.wait(timeout_s)
                time.sleep(3600)
            served.set()
            deadline_ms = int((time.time() + timeout_s) * 1000)
            self._reply(
                200,
                event,
                {
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:eu-central-1:123456789012:function:local",
                    "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000",
                },
            )

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path == f"{PREFIX}/invocation/{request_id}/response":
                outcome.update(kind="response", body=body, at=time.perf_counter())
            elif self.path in (f"{PREFIX}/invocation/{request_id}/error", f"{PREFIX}/init/error"):
                outcome.update(kind="error", body=body)
            else:
                return self._reply(404)
            self._reply(202)
            done.set()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # A short poll interval: shutdown() waits for it, and a timed invocation would carry
    # up to the default half second of it.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
               AWS_LAMBDA_FUNCTION_NAME=os.path.basename(command[0]),
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE="512", AWS_LAMBDA_FUNCTION_VERSION="$LATEST")
    started = time.perf_counter()
    output = subprocess.DEVNULL if quiet else log
    process = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    try:
        while not done.wait(0.05):
            if process.poll() is not None:
                outcome.setdefault("kind", "error")
                outcome.setdefault("body", f'{{"errorMessage": "exited with {process.returncode} before answering"}}'.encode())
                break
        if timing is not None:
            timing["vmhwm_kib"] = vm_hwm_kib(process.pid)
            timing["cpu_s"] = cpu_seconds(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
        server.shutdown()
    if timing is not None and "at" in outcome:
        timing["answered_after_s"] = outcome["at"] - started
    return outcome.get("kind", "error"), outcome.get("body", b"")


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set (its own, not inherited as getrusage's can be), or -1."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system, all its threads) the process has used so far, or -1."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # Fields after the command name, which is in parentheses and may hold spaces.
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return -1.0


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    with open(sys.argv[1], "rb") as handle:
        event = handle.read()
    kind, body = run(event, sys.argv[3:], timeout_s=float(os.environ.get("LAMBDA_RIE_TIMEOUT_S", "300")))
    print(body.decode())
    sys.exit(0 if kind == "response" else 1)


if __name__ == "__main__":
    main()
