"""The whole job end to end (issue 14), the release binaries against a plain Python pipeline.

`make bench-e2e`. On real local parts: moto_server (S3, SQS, Secrets Manager), OpenSSH sshd
on loopback and the Kinaxis simulator (release build), one simulator process per latency,
shared by everything measured at that latency. Each round, alternating:
  - ours: a signed webhook POSTed through the `webhook` binary, the job's notification
    read from SQS, the `worker` binary on it (both through scripts/lambda_rie.py, the
    Lambda Runtime API stand-in) until the receipt is in S3 and the file in PF2; the step
    times are the worker's own, from its `job summary` log line;
  - Python: benches/baseline_pipeline.py (requests + csv + paramiko, one page at a time,
    no S3 staging), a process of its own;
  - the limit of each step on this machine: the pages by curl, 4 in flight; one S3 PUT of
    the file by curl; OpenSSH `sftp -b` with `put -f` (fsync, as ours) and a rename.
Prints min / median / max of each figure. Asserts nothing about speed.
    python benches/e2e.py RELEASE_DIR [--rows N] [--page-size N] [--rounds N] [--latencies 0,20]
    python benches/e2e.py RELEASE_DIR --scale 100000,10000000 [--latencies 0,20]
        (issue 11: our worker alone, worksheet and bulk mode, time and its own peak memory
        at each row count; no Python run)
    python benches/e2e.py RELEASE_DIR --lambda-shape [--latencies 0]
        (issue 24: the worker and the Python pipeline each held to 0.6 of one core by a
        cgroup, S3 2 ms and SFTP 30 ms round trip away through relays; benches/lambda_shape.py)
"""
import argparse
import base64
import getpass
import hashlib
import hmac
import json
import os
import shutil
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import boto3
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from lambda_rie import run  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lambda_shape import CpuLimit, LatencyRelay  # noqa: E402

# What 1024 MB buys on Lambda, and how far S3 and SAP are.
LAMBDA_CORES = 0.6
S3_RTT_MS = 2
SFTP_RTT_MS = 30

PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, what: str) -> None:
    until = time.time() + 30
    while time.time() < until:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench-e2e: {what} did not listen on port {port}")


class Parts:
    """The processes this benchmark started; stopped, by their own ids, when it ends."""

    def __init__(self):
        self.processes = []

    def start(self, command: list, what: str, port: int, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        self.processes.append(process)
        wait_port(port, what)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
        self.processes.remove(process)

    def stop_all(self) -> None:
        for process in list(self.processes):
            self.stop(process)


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its children it has waited for (sshd's sessions)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")  # shows as nan in every sum it enters, never as a smaller figure


def known(seconds: float) -> float:
    """lambda_rie's -1 (could not read) as nan, so it cannot pass for a figure."""
    return seconds if seconds >= 0 else float("nan")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def stats(values: list) -> tuple:
    return (min(values), statistics.median(values), max(values))


def fmt(values: list, scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "n/a"
    low, mid, high = (v * scale for v in stats(values))
    return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"


class Bench:
    def sshd_children(self) -> bool:
        try:
            with open(f"/proc/{self.sshd.pid}/task/{self.sshd.pid}/children") as children:
                return bool(children.read().split())
        except OSError:
            return False

    def stand_ins_cpu(self) -> dict:
        """CPU seconds so far of the stand-ins both pipelines share the machine with. An sshd
        session's own process is counted once sshd has reaped it, after its connection."""
        return {"moto": process_cpu_s(self.moto.pid), "sim": process_cpu_s(self.sim.pid),
                "sshd": process_cpu_s(self.sshd.pid)}

    def cpu_since(self, before: dict) -> dict:
        # A session's CPU reaches sshd's figures once sshd has reaped its process, just after
        # the connection ends: wait for sshd to have no child left (at most 2 s).
        until = time.time() + 2
        while time.time() < until and self.sshd_children():
            time.sleep(0.01)
        after = self.stand_ins_cpu()
        return {f"{name}_cpu_s": after[name] - before[name] for name in before}

    def __init__(self, args):
        self.args = args
        self.release = os.path.abspath(args.release_dir)
        # Whose functions the next `ours` runs: these, or `--baseline`'s.
        self.binaries = self.release
        self.parts = Parts()
        self.work = tempfile.mkdtemp(prefix="bench-e2e-")
        self.round = 0
        self.cpu_limit = CpuLimit(LAMBDA_CORES) if args.lambda_shape else None

    def limited(self, command: list) -> list:
        """`command` under the CPU limit, when the run is Lambda-shaped."""
        return self.cpu_limit.wrap(command) if self.cpu_limit else command

    def start_stack(self) -> None:
        moto_port, sshd_port = free_port(), free_port()
        moto = os.path.join(ROOT, ".venv", "bin", "moto_server")
        self.moto = self.parts.start([moto, "-H", "127.0.0.1", "-p", str(moto_port)], "moto_server", moto_port)
        self.sftp_dir = os.path.join(self.work, "sftp")
        # The local stack's SFTP users, one per SAP system (scripts/stack.sh does the same);
        # the Python pipeline logs in as this account.
        subprocess.run([os.path.join(ROOT, "scripts", "sshd.sh"), self.sftp_dir, str(sshd_port), "sap-pf2:PF2",
                        "sap-wp2:WP2"], check=True)
        with open(os.path.join(self.sftp_dir, "nss_wrapper")) as handle:
            nss = {"LD_PRELOAD": handle.read().strip(), "NSS_WRAPPER_PASSWD": os.path.join(self.sftp_dir, "passwd"),
                   "NSS_WRAPPER_GROUP": os.path.join(self.sftp_dir, "group")}
        self.sshd = self.parts.start(
            ["/usr/sbin/sshd", "-D", "-e", "-f", os.path.join(self.sftp_dir, "sshd_config")], "sshd", sshd_port,
            env={**os.environ, **nss},
        )
        self.sshd_port = sshd_port
        endpoint = f"http://127.0.0.1:{moto_port}"
        # The functions (and the Python pipeline's SFTP) reach S3 and SAP through the
        # relays when the run is Lambda-shaped; the bench's own reads go direct.
        self.sftp_port, functions_endpoint = sshd_port, endpoint
        if self.args.lambda_shape:
            self.relays = [LatencyRelay(sshd_port, SFTP_RTT_MS), LatencyRelay(moto_port, S3_RTT_MS)]
            self.sftp_port = self.relays[0].port
            functions_endpoint = f"http://127.0.0.1:{self.relays[1].port}"
        out = subprocess.run(
            [PYTHON, os.path.join(ROOT, "scripts", "local_aws.py"), "--endpoint", endpoint,
             "--kinaxis-url", "http://unset", "--sftp-port", str(self.sftp_port), "--sftp-dir", self.sftp_dir],
            check=True, capture_output=True, text=True,
        ).stdout
        self.env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        self.env["AWS_ENDPOINT_URL"] = functions_endpoint
        self.env.update(KINAXIS_PAGE_SIZE=str(self.args.page_size), RUST_LOG="info", SPOOL_DIR=self.work)
        # Settings under trial (`--env STREAM_PART_MIB=5`): the functions' environment.
        self.env.update(setting.split("=", 1) for setting in self.args.env)
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=self.env["AWS_REGION"]
        )
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        sm = session.client("secretsmanager", endpoint_url=endpoint)
        self.whsec = json.loads(sm.get_secret_value(SecretId=self.env["WEBHOOK_SECRET_ID"])["SecretString"])[
            "hmac_secrets"][0]
        self.pf2 = os.path.join(self.sftp_dir, "sap", "PF2")

    def start_sim(self, latency_ms: int) -> None:
        port = free_port()
        self.sim = self.parts.start(
            [os.path.join(self.release, "kinaxis-sim"), "--port", str(port), "--rows", str(self.args.rows),
             "--first-page", str(self.args.page_size), "--latency-ms", str(latency_ms)],
            "kinaxis-sim", port,
        )
        self.sim_url = f"http://127.0.0.1:{port}"
        self.env["KINAXIS_BASE_URL"] = self.sim_url

    def clear_pf2(self, folder: str = None) -> None:
        folder = folder or self.pf2
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))

    # ------------------------------------------------------------------ ours

    def invoke(self, binary: str, event: dict, log) -> tuple:
        saved = dict(os.environ)
        os.environ.update(self.env)
        timing = {}
        try:
            command = self.limited([os.path.join(self.binaries, binary)])
            if self.args.wrap_worker and binary == "worker":
                # A profiler around the worker (its figures are then the profiler's): e.g.
                # "perf record -e cpu-clock -g -o /tmp/worker.data --", or valgrind's massif.
                command = [*shlex.split(self.args.wrap_worker.replace("{round}", str(self.round))), *command]
            kind, body = run(json.dumps(event).encode(), command,
                             timeout_s=900, timing=timing,
                             log=log, quiet=log is None)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        if kind != "response":
            sys.exit(f"bench-e2e: the {binary} function failed: {body.decode()[:500]}")
        return json.loads(body), timing

    def ours(self, event_file: str = "webhook-http-api-pf.json", folder: str = None) -> dict:
        self.clear_pf2(folder)
        self.round += 1
        with open(os.path.join(ROOT, "events", event_file)) as handle:
            event = json.load(handle)
        body = event["body"].encode()
        now = int(time.time())
        msg_id = f"msg_bench_e2e_{os.getpid()}_{self.round}"
        event["headers"].update(
            {"webhook-id": msg_id, "webhook-timestamp": str(now), "webhook-signature": sign(self.whsec, msg_id, now, body)}
        )
        cpu_before = self.stand_ins_cpu()
        started = time.perf_counter()
        answer, webhook_timing = self.invoke("webhook", event, None)
        if answer["statusCode"] != 202:
            sys.exit(f"bench-e2e: the webhook answered {answer['statusCode']}: {answer.get('body')}")
        job_id = json.loads(answer["body"])["jobId"]
        message = None
        until = time.time() + 30
        while message is None and time.time() < until:
            # Polled every 10 ms rather than long-polled: moto's long poll answers late.
            got = self.sqs.receive_message(QueueUrl=self.env["JOBS_QUEUE_URL"], WaitTimeSeconds=0,
                                           MaxNumberOfMessages=1)
            if not got.get("Messages"):
                time.sleep(0.01)
            for candidate in got.get("Messages", []):
                if job_id in candidate["Body"]:
                    message = candidate
                else:
                    self.sqs.delete_message(QueueUrl=self.env["JOBS_QUEUE_URL"],
                                            ReceiptHandle=candidate["ReceiptHandle"])
        if message is None:
            sys.exit("bench-e2e: no job notification arrived on the queue")
        queued = time.perf_counter() - started
        sqs_event = {"Records": [{
            "messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
            "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
            "md5OfBody": message["MD5OfBody"], "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:eu-central-1:123456789012:maestro-relay-jobs",
            "awsRegion": self.env["AWS_REGION"],
        }]}
        log_path = os.path.join(self.work, f"worker-{self.round}.log")
        with open(log_path, "w") as log:
            result, timing = self.invoke("worker", sqs_event, log)
        if result.get("batchItemFailures"):
            sys.exit(f"bench-e2e: the worker failed the message; see {log_path}")
        receipt = json.loads(
            self.s3.get_object(Bucket=self.env["STAGING_BUCKET"], Key=f"receipts/{job_id}.json")["Body"].read())
        delivered = receipt["files"][0]["remotePath"]
        whole = time.perf_counter() - started
        stand_ins = self.cpu_since(cpu_before)
        if not os.path.exists(delivered):
            sys.exit(f"bench-e2e: {delivered} is not in PF2")
        self.sqs.delete_message(QueueUrl=self.env["JOBS_QUEUE_URL"], ReceiptHandle=message["ReceiptHandle"])
        summary = {}
        with open(log_path) as log:
            for line in log:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("message") == "job summary":
                    summary = record
        if summary.get("outcome") != "delivered":
            sys.exit(f"bench-e2e: no delivered job summary in {log_path}")
        self.last_delivered = delivered
        return {
            "whole_s": whole,
            "fetch_s": summary["fetch_ms"] / 1e3,
            "stage_s": summary["stage_ms"] / 1e3,
            "deliver_s": summary["deliver_ms"] / 1e3,
            "worker_total_s": summary["total_ms"] / 1e3,
            "to_queue_s": queued,
            "worker_answer_s": timing.get("answered_after_s", float("nan")),
            "rows": summary["rows"],
            "bytes": summary["bytes"],
            "vmhwm_mb": timing.get("vmhwm_kib", -1) / 1024,
            "cpu_s": known(timing.get("cpu_s", -1)),
            "webhook_cpu_s": known(webhook_timing.get("cpu_s", -1)),
            **stand_ins,
        }

    # ------------------------------------------------------------------ Python

    def python(self) -> dict:
        self.clear_pf2()
        config_path = os.path.join(self.work, "baseline.json")
        out = os.path.join(self.work, "PlannedOrders-PF_python.csv")
        with open(config_path, "w") as handle:
            json.dump({
                "kinaxis_url": self.sim_url, "client_id": "relay-client", "client_secret": "relay-secret",
                "page_size": self.args.page_size, "out": out,
                "sftp": {"host": "127.0.0.1", "port": self.sftp_port, "username": getpass.getuser(),
                         "key_path": os.path.join(self.sftp_dir, "client_ed25519"), "remote_dir": self.pf2},
            }, handle)
        cpu_before = self.stand_ins_cpu()
        started = time.perf_counter()
        done = subprocess.run(self.limited([PYTHON, os.path.join(ROOT, "benches", "baseline_pipeline.py"), config_path]),
                              capture_output=True, text=True)
        whole = time.perf_counter() - started
        stand_ins = self.cpu_since(cpu_before)
        if done.returncode != 0:
            sys.exit(f"bench-e2e: the Python pipeline failed: {done.stderr[-800:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        if not os.path.exists(os.path.join(self.pf2, os.path.basename(out))):
            sys.exit("bench-e2e: the Python pipeline's file is not in PF2")
        self.last_python_csv = out
        return {"whole_s": whole, "fetch_s": figures["fetch_csv_s"], "deliver_s": figures["sftp_s"],
                "rows": figures["rows"], "bytes": figures["bytes"], "vmhwm_mb": figures["vmhwm_kib"] / 1024,
                "cpu_s": figures["cpu_s"], **stand_ins}

    # ------------------------------------------------------------------ limits

    def limits(self, csv_path: str) -> dict:
        http = requests.Session()
        token = http.post(f"{self.sim_url}/oauth2/token", auth=("relay-client", "relay-secret"),
                          data={"grant_type": "client_credentials"}).json()["access_token"]
        config = os.path.join(self.work, "curl.cfg")
        with open(config, "w") as handle:
            handle.write(f'header = "Authorization: Bearer {token}"\n')
            for start in range(self.args.page_size, self.args.rows, self.args.page_size):
                handle.write(
                    f'url = "{self.sim_url}/integration/V1/data/worksheet?queryId=q0&workbookName=PlannedOrders%20Export'
                    f'&Scope=Public&worksheetName=Planned%20Orders&startRow={start}&pageSize={self.args.page_size}"\n'
                    'output = "/dev/null"\n')
        started = time.perf_counter()
        workbook = http.post(f"{self.sim_url}/integration/V1/data/workbook", headers={"Authorization": f"Bearer {token}"},
                             json={"Scenario": {"Name": "Enterprise Data", "Scope": "Public"},
                                   "WorkbookParameters": {"Workbook": {"Name": "PlannedOrders Export", "Scope": "Public"},
                                                          "SiteGroup": "All Sites"}})
        workbook.raise_for_status()
        subprocess.run(["curl", "-sSf", "--no-progress-meter", "--parallel", "--parallel-max", "4", "-K", config], check=True)
        pages = time.perf_counter() - started

        key = f"bench/put-limit-{self.round}.csv"
        url = f"{self.env['AWS_ENDPOINT_URL']}/{self.env['STAGING_BUCKET']}/{key}"
        started = time.perf_counter()
        subprocess.run(["curl", "-sSf", "-o", "/dev/null", "-T", csv_path, url], check=True)
        put = time.perf_counter() - started
        self.s3.delete_object(Bucket=self.env["STAGING_BUCKET"], Key=key)

        self.clear_pf2()
        name = os.path.basename(csv_path)
        batch = os.path.join(self.work, "sftp.batch")
        with open(batch, "w") as handle:
            handle.write(f"put -f {csv_path} {self.pf2}/.{name}.part\nrename {self.pf2}/.{name}.part {self.pf2}/{name}\n")
        started = time.perf_counter()
        subprocess.run(
            ["sftp", "-q", "-b", batch, "-i", os.path.join(self.sftp_dir, "client_ed25519"), "-P", str(self.sshd_port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             f"{getpass.getuser()}@127.0.0.1"], check=True, stdout=subprocess.DEVNULL)
        sftp = time.perf_counter() - started
        return {"pages_s": pages, "put_s": put, "sftp_s": sftp}

    # ------------------------------------------------------------------ report

    def measure(self, latency_ms: int) -> None:
        self.start_sim(latency_ms)
        ours, python, limits, baseline = [], [], [], []
        try:
            for i in range(self.args.rounds):
                # Alternating, and which goes first alternates too.
                order = [("ours", self.ours), ("python", self.python)]
                if self.args.baseline:
                    order.append(("baseline", self.baseline_run))
                order = order[i % len(order):] + order[:i % len(order)]
                for name, step in order:
                    {"ours": ours, "python": python, "baseline": baseline}[name].append(step())
                limits.append(self.limits(self.last_python_csv))
                print(f"   round {i + 1}: ours {ours[-1]['whole_s']:.2f} s, Python {python[-1]['whole_s']:.2f} s"
                      + (f", baseline {baseline[-1]['whole_s']:.2f} s" if baseline else ""), flush=True)
        finally:
            self.parts.stop(self.sim)
        self.report(latency_ms, ours, python, limits)
        if baseline:
            self.report_baseline(ours, python, baseline)

    def baseline_run(self) -> dict:
        """`ours` with the baseline's webhook and worker binaries, on the same stack."""
        self.binaries = os.path.abspath(self.args.baseline)
        try:
            return self.ours()
        finally:
            self.binaries = self.release

    def report_baseline(self, ours: list, python: list, baseline: list) -> None:
        col = lambda runs, key: [r[key] for r in runs]  # noqa: E731
        print(f"   -- against the baseline binaries ({self.args.baseline}), the same rounds:")
        for what, key, digits in (("whole job, s", "whole_s", 2), ("worker CPU s", "cpu_s", 2),
                                  ("worker peak RSS, MB", "vmhwm_mb", 1)):
            ratios = [b[key] / o[key] for o, b in zip(ours, baseline)]
            print(f"   {what:<22} now {fmt(col(ours, key), digits=digits)}, baseline "
                  f"{fmt(col(baseline, key), digits=digits)}; baseline / now {fmt(ratios)}x")
        cpu = [p["cpu_s"] / b["cpu_s"] for b, p in zip(baseline, python)]
        print(f"   CPU Python / baseline worker, per round: {fmt(cpu)}x")

    def report(self, latency_ms: int, ours: list, python: list, limits: list) -> None:
        col = lambda runs, key: [r[key] for r in runs]  # noqa: E731
        rows, size = ours[0]["rows"], ours[0]["bytes"]
        print(f"\n== {rows:,} rows ({size / 1e6:.1f} MB of CSV), {self.args.page_size}-row pages, simulator at "
              f"{latency_ms} ms per call; min / median / max of {len(ours)} alternating rounds, seconds")
        print(f"   {'step':<34} {'ours (worker log)':>22} {'Python pipeline':>22}   limit on this machine")
        lines = [
            ("fetch + CSV", col(ours, "fetch_s"), col(python, "fetch_s"),
             f"{fmt(col(limits, 'pages_s'))}  (pages by curl, 4 in flight)"),
            ("S3 staging", col(ours, "stage_s"), [], f"{fmt(col(limits, 'put_s'))}  (one PUT of the file, curl)"),
            ("SFTP (deliver)", col(ours, "deliver_s"), col(python, "deliver_s"),
             f"{fmt(col(limits, 'sftp_s'))}  (OpenSSH sftp put -f + rename)"),
            ("worker total (its log)", col(ours, "worker_total_s"), [], ""),
            ("POST → job message read from SQS", col(ours, "to_queue_s"), [], "(webhook binary start to answer, S3, SQS)"),
            ("worker process start → answer", col(ours, "worker_answer_s"), [], "(cold start, secrets, lease, records)"),
        ]
        for name, a, b, limit in lines:
            print(f"   {name:<34} {fmt(a):>22} {fmt(b):>22}   {limit}")
        ratios = [p["whole_s"] / o["whole_s"] for o, p in zip(ours, python)]
        print(f"   {'whole job (POST → receipt / proc)':<34} {fmt(col(ours, 'whole_s')):>22} "
              f"{fmt(col(python, 'whole_s')):>22}   slowest step's limit alone: "
              f"{fmt([max(l.values()) for l in limits])}")
        if self.cpu_limit:
            print(f"   Python / ours, per round: {fmt(ratios)}x  (Lambda-shaped: no goal yet; issue 24)")
        else:
            print(f"   Python / ours, per round: {fmt(ratios)}x  (goal after overlapping: ≥ "
                  f"{5 if latency_ms == 0 else 4}x)")
        cores = os.cpu_count() or 1
        ours_all = [r["cpu_s"] + r["webhook_cpu_s"] + r["moto_cpu_s"] + r["sim_cpu_s"] + r["sshd_cpu_s"] for r in ours]
        python_all = [r["cpu_s"] + r["sim_cpu_s"] + r["sshd_cpu_s"] for r in python]
        print(f"   CPU seconds per job, every process: ours {fmt(ours_all)} = worker {fmt(col(ours, 'cpu_s'))} + webhook "
              f"{fmt(col(ours, 'webhook_cpu_s'))} + moto_server {fmt(col(ours, 'moto_cpu_s'))} + simulator "
              f"{fmt(col(ours, 'sim_cpu_s'))} + sshd {fmt(col(ours, 'sshd_cpu_s'))}")
        print(f"   {'':<34} Python {fmt(python_all)} = itself {fmt(col(python, 'cpu_s'))} + simulator "
              f"{fmt(col(python, 'sim_cpu_s'))} + sshd {fmt(col(python, 'sshd_cpu_s'))}")
        goal = 5 if latency_ms == 0 else 4
        print(f"   floor on {cores} cores (every process's CPU / {cores}): ours {fmt([c / cores for c in ours_all])} s, "
              f"against a whole job of {fmt(col(ours, 'whole_s'))} s; a {goal}x job would take "
              f"{fmt([p['whole_s'] / goal for p in python])} s; rounds whose floor is above their {goal}x time: "
              f"{sum(c / cores > p['whole_s'] / goal for c, p in zip(ours_all, python))} of {len(ours)}")
        print(f"   CPU seconds of the process: worker {fmt(col(ours, 'cpu_s'))}, Python {fmt(col(python, 'cpu_s'))}  "
              "(what sets the pace on Lambda, where 1024 MB is about 0.6 of a vCPU)")
        cpu_ratios = [p["cpu_s"] / o["cpu_s"] for o, p in zip(ours, python)]
        print(f"   CPU Python / worker, per round: {fmt(cpu_ratios)}x  (goal: ≥ 6x, issue 24)")
        print(f"   peak RSS (VmHWM) MB: worker {fmt(col(ours, 'vmhwm_mb'), digits=1)}, "
              f"Python {fmt(col(python, 'vmhwm_mb'), digits=1)}")
        if python[0]["rows"] != rows:
            print(f"   note: Python wrote {python[0]['rows']} rows, ours {rows}")


def scale(bench: "Bench", rows_list: list, latencies: list) -> None:
    """Our worker alone at each row count, worksheet mode and bulk mode: the whole job's
    time and the worker process's own peak memory (VmHWM), one run each."""
    bench.env["ALLOWED_REQUESTS"] = json.dumps(
        {"*": {"workbooks": ["PlannedOrders Export"], "tables": ["Mfg::PlannedOrder"]}})
    wp2 = os.path.join(bench.sftp_dir, "sap", "WP2")
    results = []
    for latency in latencies:
        for rows in rows_list:
            bench.args.rows = rows
            bench.start_sim(latency)
            try:
                for mode, event_file, folder in (("worksheet", "webhook-http-api-pf.json", bench.pf2),
                                                 ("bulk", "webhook-http-api-bulk-wp.json", wp2)):
                    run = bench.ours(event_file, folder)
                    bench.clear_pf2(folder)
                    results.append((mode, rows, latency, run))
                    print(f"   {mode:<9} {rows:>11,} rows at {latency:>2} ms/call: whole {run['whole_s']:7.2f} s "
                          f"(fetch {run['fetch_s']:.2f}, stage {run['stage_s']:.2f}, deliver {run['deliver_s']:.2f}), "
                          f"worker peak {run['vmhwm_mb']:.1f} MB, {run['bytes'] / 1e6:.0f} MB of CSV", flush=True)
            finally:
                bench.parts.stop(bench.sim)
    print(f"\n== scale: worksheet pages of {bench.args.page_size} rows, bulk pages of "
          f"{bench.env.get('KINAXIS_BULK_PAGE_SIZE', '20000 (default)')}; one run each")
    print(f"   {'mode':<9} {'rows':>11} {'ms/call':>7} {'whole s':>8} {'rows/s':>11} {'peak MB':>8} "
          f"{'Δ peak vs smallest':>19}")
    for mode, rows, latency, run in results:
        smallest = min((r for m, n, l, r in results if m == mode and l == latency),
                       key=lambda r: r["rows"])
        print(f"   {mode:<9} {rows:>11,} {latency:>7} {run['whole_s']:>8.2f} {rows / run['whole_s']:>11,.0f} "
              f"{run['vmhwm_mb']:>8.1f} {run['vmhwm_mb'] - smallest['vmhwm_mb']:>+18.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("release_dir")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latencies", default="0,20")
    parser.add_argument("--scale", default="", help="row counts: our worker alone, worksheet and bulk mode")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run, each round, the webhook and worker binaries in DIR (an earlier build)")
    parser.add_argument("--wrap-worker", metavar="COMMAND",
                        help="run the worker under COMMAND ({round} is the round), e.g. a profiler")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the functions' environment, for trying one (repeatable)")
    parser.add_argument("--lambda-shape", action="store_true",
                        help=f"the worker and the Python pipeline at {LAMBDA_CORES} of a core, S3 {S3_RTT_MS} ms and "
                             f"SFTP {SFTP_RTT_MS} ms round trip away")
    args = parser.parse_args()
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        bench.start_stack()
        print(f"bench-e2e: {os.cpu_count()} cores; other work on the machine shows in these figures", flush=True)
        if bench.cpu_limit:
            print(f"bench-e2e: Lambda-shaped: the worker and the Python pipeline each held to {LAMBDA_CORES} of a core "
                  f"({bench.cpu_limit.how}); S3 (moto_server) {S3_RTT_MS} ms and SFTP (sshd) {SFTP_RTT_MS} ms round "
                  "trip away through relays (benches/lambda_shape.py); the stand-ins themselves are not limited",
                  flush=True)
        if args.scale:
            scale(bench, [int(v) for v in args.scale.split(",")], [int(v) for v in args.latencies.split(",")])
            return
        for latency in (int(v) for v in args.latencies.split(",")):
            print(f"\n-- simulator at {latency} ms per call", flush=True)
            bench.measure(latency)
    finally:
        bench.parts.stop_all()
        shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    main()
