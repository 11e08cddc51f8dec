"""The plain Python pipeline `make bench-e2e` measures the worker against.

What a short script would do for the same job: requests for the Kinaxis token, the
workbook and its pages (one page at a time), the csv module to a local file, paramiko to
upload it to the SFTP folder under a temporary name and rename it. No S3 staging, no
retries, no records. Prints one JSON line: step times, rows, bytes and this process's peak
RSS (VmHWM).
    python baseline_pipeline.py CONFIG_JSON
CONFIG_JSON: {"kinaxis_url", "client_id", "client_secret", "page_size", "out", "sftp": {
"host", "port", "username", "key_path", "remote_dir"}}
"""
import csv
import json
import os
import sys
import time

import paramiko
import requests


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def fetch_to_csv(config: dict) -> int:
    base = config["kinaxis_url"].rstrip("/")
    page_size = int(config["page_size"])
    http = requests.Session()
    token = http.post(
        f"{base}/oauth2/token",
        auth=(config["client_id"], config["client_secret"]),
        data={"grant_type": "client_credentials"},
    )
    token.raise_for_status()
    http.headers["Authorization"] = "Bearer " + token.json()["access_token"]
    answer = http.post(
        f"{base}/integration/V1/data/workbook",
        json={
            "Scenario": {"Name": "Enterprise Data", "Scope": "Public"},
            "WorkbookParameters": {
                "Workbook": {"Name": "PlannedOrders Export", "Scope": "Public"},
                "SiteGroup": "All Sites",
                "WorksheetNames": ["Planned Orders"],
            },
        },
    )
    answer.raise_for_status()
    sheet = answer.json()["Worksheets"][0]
    total = sheet["TotalRowCount"]
    query_id = sheet["QueryHandle"]["QueryID"].lstrip("#")
    rows = 0
    with open(config["out"], "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow([c["Id"] for c in sheet["Columns"]])
        for row in sheet.get("Rows", []):
            writer.writerow(row["Values"])
            rows += 1
        while rows < total:
            page = http.get(
                f"{base}/integration/V1/data/worksheet",
                params={
                    "queryId": query_id,
                    "workbookName": "PlannedOrders Export",
                    "Scope": "Public",
                    "worksheetName": sheet["Name"],
                    "startRow": rows,
                    "pageSize": page_size,
                },
            )
            page.raise_for_status()
            got = page.json()["Rows"]
            if not got:
                raise SystemExit(f"baseline: no rows from {rows} of {total}")
            for row in got:
                writer.writerow(row["Values"])
            rows += len(got)
    return rows


def upload(config: dict) -> None:
    sftp = config["sftp"]
    key = paramiko.Ed25519Key.from_private_key_file(sftp["key_path"])
    transport = paramiko.Transport((sftp["host"], int(sftp["port"])))
    try:
        transport.connect(username=sftp["username"], pkey=key)
        client = paramiko.SFTPClient.from_transport(transport)
        name = os.path.basename(config["out"])
        temporary = f"{sftp['remote_dir']}/.{name}.part"
        client.put(config["out"], temporary)
        client.posix_rename(temporary, f"{sftp['remote_dir']}/{name}")
        client.close()
    finally:
        transport.close()


def main() -> None:
    with open(sys.argv[1]) as handle:
        config = json.load(handle)
    started = time.perf_counter()
    rows = fetch_to_csv(config)
    fetched = time.perf_counter()
    upload(config)
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "fetch_csv_s": fetched - started,
                "sftp_s": done - fetched,
                "total_s": done - started,
                "rows": rows,
                "bytes": os.path.getsize(config["out"]),
                "vmhwm_kib": vm_hwm_kib(),
                "cpu_s": sum(os.times()[:2]),
            }
        )
    )


if __name__ == "__main__":
    main()
