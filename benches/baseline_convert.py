"""Python baseline of the conversion benchmark: the same pages, json + csv + hashlib.

Reads one JSON page per line, writes RFC 4180 CSV (header, CRLF) to a hashing sink, and
prints the seconds of five runs, sorted.
"""
import csv
import hashlib
import json
import sys
import time

COLUMNS = ["Order", "Part", "Site", "Quantity", "DueDate", "Description"]


class HashingSink:
    def __init__(self):
        self.hash = hashlib.sha256()
        self.bytes = 0

    def write(self, text):
        data = text.encode("utf-8")
        self.hash.update(data)
        self.bytes += len(data)


def convert(pages):
    sink = HashingSink()
    writer = csv.writer(sink, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for page in pages:
        for row in json.loads(page)["Rows"]:
            writer.writerow(row["Values"])
    return sink.bytes


def main():
    with open(sys.argv[1], "rb") as handle:
        pages = handle.read().splitlines()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        convert(pages)
        times.append(time.perf_counter() - started)
    print(" ".join(f"{t:.6f}" for t in sorted(times)))


if __name__ == "__main__":
    main()
