"""The main job end to end on the local stack, through the real function binaries.

Kinaxis' side: a webhook from events/ signed now with the secret from Secrets Manager.
Then: webhook binary → job in S3 → S3 notification on SQS → worker binary → Kinaxis
simulator → CSV staged in S3 → SFTP to the PF2 folder → receipt. Prints what arrived.
    python scripts/demo.py TARGET_DIR [EVENT_FILE]
"""
import base64
import hashlib
import hmac
import json
import os
import shlex
import sys
import time

import boto3

sys.path.insert(0, os.path.dirname(__file__))
from lambda_rie import run  # noqa: E402

STATE = ".local/stack"


def load_env() -> dict:
    """The stack's env file, whose values are quoted for a shell."""
    with open(os.path.join(STATE, "env")) as handle:
        return dict(shlex.split(line)[0].split("=", 1) for line in handle if "=" in line)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def invoke(binary: str, event: dict, name: str) -> dict:
    path = os.path.join(STATE, f"{name}-event.json")
    with open(path, "w") as handle:
        json.dump(event, handle)
    kind, body = run(json.dumps(event).encode(), [binary])
    if kind != "response":
        sys.exit(f"demo: the {name} function failed: {body.decode()}")
    return json.loads(body)


def main() -> None:
    target_dir = sys.argv[1]
    event_file = sys.argv[2] if len(sys.argv) > 2 else "events/webhook-http-api-pf.json"
    env = load_env()
    os.environ.update(env)
    session = boto3.session.Session(region_name=env["AWS_REGION"])
    sm = session.client("secretsmanager", endpoint_url=env["AWS_ENDPOINT_URL"])
    sqs = session.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"])
    s3 = session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])

    whsec = json.loads(sm.get_secret_value(SecretId=env["WEBHOOK_SECRET_ID"])["SecretString"])["hmac_secrets"][0]
    with open(event_file) as handle:
        event = json.load(handle)
    body = event["body"].encode()
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body)
    now = int(time.time())
    # A fresh id each run: the same id again is a duplicate the webhook answers from its record.
    msg_id = f"msg_demo_{now}_{os.getpid()}"
    event["headers"]["webhook-id"] = msg_id
    event["headers"].update({"webhook-timestamp": str(now), "webhook-signature": sign(whsec, msg_id, now, body)})

    print(f"==> POST /webhook ({event_file}) through the webhook binary")
    answer = invoke(os.path.join(target_dir, "webhook"), event, "webhook")
    print(f"    {answer['statusCode']} {answer.get('body')}")
    if answer["statusCode"] not in (200, 202):
        sys.exit("demo: the webhook refused the event")

    print("==> waiting for the job's S3 notification on SQS")
    message = None
    until = time.time() + 30
    while message is None and time.time() < until:
        got = sqs.receive_message(QueueUrl=env["JOBS_QUEUE_URL"], WaitTimeSeconds=2, MaxNumberOfMessages=1)
        for candidate in got.get("Messages", []):
            if json.loads(candidate["Body"]).get("Event") == "s3:TestEvent":
                sqs.delete_message(QueueUrl=env["JOBS_QUEUE_URL"], ReceiptHandle=candidate["ReceiptHandle"])
                continue
            message = candidate
    if message is None:
        sys.exit("demo: no job notification arrived on the queue")
    sqs_event = {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-central-1:123456789012:maestro-relay-jobs",
                "awsRegion": env["AWS_REGION"],
            }
        ]
    }

    print("==> the worker binary on that SQS message")
    started = time.time()
    result = invoke(os.path.join(target_dir, "worker"), sqs_event, "worker")
    print(f"    answered {json.dumps(result)} in {time.time() - started:.1f} s")
    if result.get("batchItemFailures"):
        sys.exit("demo: the worker reported the message as failed")
    sqs.delete_message(QueueUrl=env["JOBS_QUEUE_URL"], ReceiptHandle=message["ReceiptHandle"])

    job_id = json.loads(answer["body"])["jobId"]
    receipt = json.loads(s3.get_object(Bucket=env["STAGING_BUCKET"], Key=f"receipts/{job_id}.json")["Body"].read())
    delivered = receipt["files"][0]["remotePath"]
    print(f"\n==> delivered: {delivered}")
    with open(delivered, "rb") as handle:
        head = handle.read().split(b"\r\n")[:6]
    for line in head:
        print("    " + line.decode())
    print("\n==> receipt s3://{}/receipts/{}.json".format(env["STAGING_BUCKET"], job_id))
    print(json.dumps(receipt, indent=2))

    # What a subscriber of the delivery events' bus heard (docs/events.md).
    heard = sqs.receive_message(QueueUrl=env["EVENTS_LISTENER_URL"], WaitTimeSeconds=2, MaxNumberOfMessages=10)
    for message in heard.get("Messages", []):
        event = json.loads(message["Body"])
        print("\n==> event on {}: {}".format(env["EVENT_BUS_NAME"], event["detail-type"]))
        print(json.dumps(event["detail"], indent=2))
        sqs.delete_message(QueueUrl=env["EVENTS_LISTENER_URL"], ReceiptHandle=message["ReceiptHandle"])
    if not heard.get("Messages"):
        sys.exit("demo: no File Delivered event reached the bus's listener")


if __name__ == "__main__":
    main()
