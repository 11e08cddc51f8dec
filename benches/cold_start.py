"""Cold start of a release function binary: process start to its first answered event,
through scripts/lambda_rie.py, best and median of N runs, plus the binary's size.
    python benches/cold_start.py BINARY EVENT_FILE [RUNS]
The environment (AWS_ENDPOINT_URL, secrets, bucket) comes from the caller.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from lambda_rie import run  # noqa: E402


def main() -> None:
    binary, event_file = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    with open(event_file, "rb") as handle:
        events = handle.read().splitlines()
    times = []
    for i in range(runs):
        timing = {}
        kind, body = run(events[i % len(events)], [binary], timing=timing, quiet=True)
        if kind != "response" or b'"statusCode":202' not in body.replace(b" ", b""):
            sys.exit(f"cold start run {i} did not answer 202: {body[:300]!r}")
        times.append(timing["answered_after_s"] * 1000)
    size = os.path.getsize(binary) / 1e6
    print(f"{min(times):.1f} {statistics.median(times):.1f} {size:.1f}")


if __name__ == "__main__":
    main()
