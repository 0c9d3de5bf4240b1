"""The control plane and the data plane over HTTPS on thingd's TLS port, the way a user points
boto3 at an https endpoint with the thingd root CA: no client certificate, SigV4 only."""
import json
import os
import sys

import boto3
from botocore.exceptions import ClientError

endpoint = os.environ["THINGD_HTTPS_URL"]
ca = os.environ["THINGD_ROOT_CA"]

iot = boto3.client("iot", endpoint_url=endpoint, verify=ca)
iot.create_thing(thingName="https-thing")
names = [t["thingName"] for t in iot.list_things()["things"]]
assert "https-thing" in names, names
try:
    iot.describe_thing(thingName="missing")
    raise SystemExit("describe_thing on a missing thing succeeded")
except ClientError as e:
    assert e.response["Error"]["Code"] == "ResourceNotFoundException", e.response

data = boto3.client("iot-data", endpoint_url=endpoint, verify=ca)
data.update_thing_shadow(thingName="https-thing", payload=json.dumps({"state": {"reported": {"temp": 21}}}))
shadow = json.loads(data.get_thing_shadow(thingName="https-thing")["payload"].read())
assert shadow["state"]["reported"]["temp"] == 21, shadow

# A wrong secret is refused with the AWS error name.
bad = boto3.client("iot", endpoint_url=endpoint, verify=ca, aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                   aws_secret_access_key="wrong", region_name="us-east-1")
try:
    bad.list_things()
    raise SystemExit("an unknown access key was accepted")
except ClientError as e:
    assert e.response["Error"]["Code"] == "UnrecognizedClientException", e.response
print("ok https")
sys.stdout.flush()
