"""Creates the AWS side of the local stack in moto_server and prints the functions' env.

The bucket, the jobs queue with its dead-letter queue, the bucket's `jobs/` notification to
the queue, the delivery events' bus with a rule forwarding to a listener queue, and the four
secrets in the exact JSON shapes of docs/deploy.md. The webhook's
HMAC secret is random per stack; the demo reads it back from Secrets Manager like a sender.
"""
import argparse
import base64
import json
import os
import secrets
import shlex
import subprocess

import boto3

REGION = "eu-central-1"
BUCKET = "maestro-relay-staging"
EVENT_BUS = "maestro-relay-delivery"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--kinaxis-url", required=True)
    parser.add_argument("--sftp-port", type=int, required=True)
    parser.add_argument("--sftp-dir", required=True)
    args = parser.parse_args()

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    s3 = session.client("s3", endpoint_url=args.endpoint)
    sqs = session.client("sqs", endpoint_url=args.endpoint)
    sm = session.client("secretsmanager", endpoint_url=args.endpoint)
    events = session.client("events", endpoint_url=args.endpoint)

    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    dlq_url = sqs.create_queue(QueueName="maestro-relay-jobs-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName="maestro-relay-jobs",
        Attributes={
            "VisibilityTimeout": "30",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "jobs",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "jobs/"}]}},
                }
            ]
        },
    )

    # The delivery events' bus, with a rule forwarding every event to a queue the demo reads
    # (a subscriber's stand-in).
    events.create_event_bus(Name=EVENT_BUS)
    listener_url = sqs.create_queue(QueueName="maestro-relay-events-listener")["QueueUrl"]
    listener_arn = sqs.get_queue_attributes(QueueUrl=listener_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(Name="all-delivery-events", EventBusName=EVENT_BUS, EventPattern=json.dumps({"source": ["maestro-relay"]}))
    events.put_targets(
        Rule="all-delivery-events", EventBusName=EVENT_BUS, Targets=[{"Id": "listener", "Arn": listener_arn}]
    )

    sftp_dir = args.sftp_dir
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", os.path.join(sftp_dir, "host_ed25519.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[1]

    def secret(name: str, value: dict) -> str:
        return sm.create_secret(Name=name, SecretString=json.dumps(value))["ARN"]

    whsec = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    ids = {
        "WEBHOOK_SECRET_ID": secret("maestro-relay/webhook", {"hmac_secrets": [whsec]}),
        "KINAXIS_SECRET_ID": secret(
            "maestro-relay/kinaxis", {"client_id": "relay-client", "client_secret": "relay-secret"}
        ),
    }
    # One user and key per SAP system (scripts/sshd.sh made them), as SAP has them.
    for target in ("PF2", "WP2"):
        user = f"sap-{target.lower()}"
        with open(os.path.join(sftp_dir, f"client_{user}")) as key_file:
            private_key = key_file.read()
        ids[f"SFTP_SECRET_ID_{target}"] = secret(
            f"maestro-relay/sftp/{target}",
            {
                "host": "127.0.0.1",
                "port": args.sftp_port,
                "username": user,
                "private_key": private_key,
                "host_key_sha256": fingerprint,
                "remote_dir": os.path.join(sftp_dir, "sap", target),
            },
        )

    env = {
        "AWS_ENDPOINT_URL": args.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "STAGING_BUCKET": BUCKET,
        "JOBS_QUEUE_URL": queue_url,
        "DEAD_LETTER_QUEUE_URL": dlq_url,
        "EVENT_BUS_NAME": EVENT_BUS,
        "EVENTS_LISTENER_URL": listener_url,
        "KINAXIS_BASE_URL": args.kinaxis_url,
        "KINAXIS_PAGE_SIZE": "500",
        "WORKSHEETS": "Planned Orders",
        "RETRY_INITIAL_MS": "200",
        "RETRY_MAX_DELAY_MS": "2000",
        "SFTP_DIR_PF2": os.path.join(sftp_dir, "sap", "PF2"),
        "SFTP_DIR_WP2": os.path.join(sftp_dir, "sap", "WP2"),
        **ids,
    }
    # Quoted for a shell: `set -a; . .local/stack/env` works although values hold spaces.
    for key, value in env.items():
        print(f"{key}={shlex.quote(str(value))}")


if __name__ == "__main__":
    main()
