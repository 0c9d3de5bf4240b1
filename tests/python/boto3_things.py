"""The registry half of the iot control plane, driven by the real AWS tools against thingd.

boto3 and the AWS CLI (v1) find thingd through the environment the Rust test sets:
AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE (region, endpoint_url) and AWS_ENDPOINT_URL.
Every check is an assert; the script prints "ok <n> checks" and exits 0 when all pass, or
prints the failing check and exits 1.
"""

import json
import subprocess
import sys
import traceback

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

CHECKS = 0


def check(condition, what):
    global CHECKS
    CHECKS += 1
    if not condition:
        raise AssertionError(what)


def error_of(call, *args, **kwargs):
    """Runs a call that must fail; returns (error code, HTTP status, response)."""
    try:
        result = call(*args, **kwargs)
    except ClientError as e:
        return (
            e.response["Error"]["Code"],
            e.response["ResponseMetadata"]["HTTPStatusCode"],
            e.response,
        )
    raise AssertionError(f"{call.__name__} succeeded: {result}")


def aws(*args):
    """Runs `aws iot ...` (AWS CLI v1 from the same virtualenv); returns the parsed output."""
    command = [sys.executable, "-m", "awscli", "iot", *args, "--output", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"aws iot {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout) if done.stdout.strip() else {}


def aws_fails(*args):
    """Runs `aws iot ...` that must fail; returns its stderr."""
    command = [sys.executable, "-m", "awscli", "iot", *args, "--output", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        raise AssertionError(f"aws iot {' '.join(args)} succeeded: {done.stdout}")
    return done.stderr


def cli_flow(account_region):
    region, account = account_region
    created = aws("create-thing", "--thing-name", "MyJourneyIoTDevice")
    check(created["thingName"] == "MyJourneyIoTDevice", f"create-thing: {created}")
    check(
        created["thingArn"] == f"arn:aws:iot:{region}:{account}:thing/MyJourneyIoTDevice",
        f"thing ARN: {created}",
    )
    again = aws("create-thing", "--thing-name", "MyJourneyIoTDevice")
    check(again == created, f"create-thing is idempotent: {again} vs {created}")
    described = aws("describe-thing", "--thing-name", "MyJourneyIoTDevice")
    check(described["defaultClientId"] == "MyJourneyIoTDevice", f"describe-thing: {described}")
    check(described["version"] == 1, f"version 1: {described}")
    check(described["thingId"] == created["thingId"], f"same id: {described}")
    aws(
        "update-thing",
        "--thing-name",
        "MyJourneyIoTDevice",
        "--attribute-payload",
        '{"attributes": {"temp": "32", "room": "lab"}, "merge": true}',
    )
    described = aws("describe-thing", "--thing-name", "MyJourneyIoTDevice")
    check(described["attributes"] == {"temp": "32", "room": "lab"}, f"attributes: {described}")
    check(described["version"] == 2, f"version 2: {described}")
    listed = aws("list-things", "--attribute-name", "room", "--attribute-value", "lab")
    check(
        [t["thingName"] for t in listed["things"]] == ["MyJourneyIoTDevice"],
        f"list-things filter: {listed}",
    )
    endpoint = aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS")
    check(endpoint.get("endpointAddress"), f"describe-endpoint: {endpoint}")
    stderr = aws_fails("describe-thing", "--thing-name", "NoSuchThing")
    check("ResourceNotFoundException" in stderr, f"describe missing: {stderr}")
    return endpoint["endpointAddress"]


def things_flow(iot, region, account):
    # Errors: 404, 409 with resourceId/resourceArn, 400 on a bad name.
    code, status, _ = error_of(iot.describe_thing, thingName="missing-thing")
    check((code, status) == ("ResourceNotFoundException", 404), f"404: {code} {status}")
    first = iot.create_thing(thingName="dev-1", attributePayload={"attributes": {"color": "red"}})
    code, status, response = error_of(
        iot.create_thing, thingName="dev-1", attributePayload={"attributes": {"color": "blue"}}
    )
    check((code, status) == ("ResourceAlreadyExistsException", 409), f"409: {code} {status}")
    check(response.get("resourceId") == first["thingId"], f"resourceId: {response}")
    check(response.get("resourceArn") == first["thingArn"], f"resourceArn: {response}")
    code, status, response = error_of(iot.create_thing, thingName="bad name")
    check((code, status) == ("InvalidRequestException", 400), f"400: {code} {status}")
    check("thingName" in response["Error"]["Message"], f"message names the field: {response}")
    code, status, _ = error_of(
        iot.create_thing, thingName="dev-x", attributePayload={"attributes": {"k": "bad value!"}}
    )
    check(status == 400, f"bad attribute value: {code} {status}")

    # Versions.
    iot.update_thing(thingName="dev-1", attributePayload={"attributes": {"size": "L"}, "merge": True}, expectedVersion=1)
    code, status, _ = error_of(iot.update_thing, thingName="dev-1", expectedVersion=1)
    check((code, status) == ("VersionConflictException", 409), f"version conflict: {code} {status}")
    described = iot.describe_thing(thingName="dev-1")
    check(described["attributes"] == {"color": "red", "size": "L"}, f"merged: {described}")
    iot.update_thing(thingName="dev-1", attributePayload={"attributes": {"size": ""}, "merge": True})
    check(iot.describe_thing(thingName="dev-1")["attributes"] == {"color": "red"}, "empty value removes")

    # Filters and pagination across pages.
    for i in range(7):
        iot.create_thing(
            thingName=f"page-{i}",
            attributePayload={"attributes": {"batch": "b1" if i < 4 else "b2-x"}},
        )
    exact = iot.list_things(attributeName="batch", attributeValue="b1")["things"]
    check(len(exact) == 4, f"exact filter: {exact}")
    prefix = iot.list_things(attributeName="batch", attributeValue="b", usePrefixAttributeValue=True)
    check(len(prefix["things"]) == 7, f"prefix filter: {prefix}")
    first_page = iot.list_things(maxResults=3)
    check(len(first_page["things"]) == 3 and "nextToken" in first_page, f"page 1: {first_page}")
    names = [t["thingName"] for t in first_page["things"]]
    token = first_page["nextToken"]
    while token:
        page = iot.list_things(maxResults=3, nextToken=token)
        names += [t["thingName"] for t in page["things"]]
        token = page.get("nextToken")
    check(len(names) == 9 and len(set(names)) == 9, f"all pages: {names}")
    paginated = []
    for page in iot.get_paginator("list_things").paginate(PaginationConfig={"PageSize": 2}):
        paginated += [t["thingName"] for t in page["things"]]
    check(paginated == names, f"boto3 paginator: {paginated} vs {names}")
    code, status, _ = error_of(iot.list_things, maxResults=251)
    check(status == 400, f"maxResults range: {code} {status}")

    # Deletion: missing is fine, expectedVersion is checked.
    iot.delete_thing(thingName="never-existed")
    code, status, _ = error_of(iot.delete_thing, thingName="dev-1", expectedVersion=1)
    check(code == "VersionConflictException", f"delete version: {code}")
    iot.delete_thing(thingName="dev-1")
    code, _, _ = error_of(iot.describe_thing, thingName="dev-1")
    check(code == "ResourceNotFoundException", "deleted")


def thing_types_flow(iot, region, account):
    created = iot.create_thing_type(
        thingTypeName="esp32",
        thingTypeProperties={"thingTypeDescription": "ESP32 boards", "searchableAttributes": ["room"]},
        tags=[{"Key": "team", "Value": "firmware"}],
    )
    check(created["thingTypeArn"] == f"arn:aws:iot:{region}:{account}:thingtype/esp32", f"{created}")
    again = iot.create_thing_type(
        thingTypeName="esp32",
        thingTypeProperties={"thingTypeDescription": "ESP32 boards", "searchableAttributes": ["room"]},
    )
    check(again["thingTypeId"] == created["thingTypeId"], "idempotent type")
    code, status, _ = error_of(
        iot.create_thing_type, thingTypeName="esp32", thingTypeProperties={"thingTypeDescription": "x"}
    )
    check((code, status) == ("ResourceAlreadyExistsException", 409), f"type conflict {code}")
    described = iot.describe_thing_type(thingTypeName="esp32")
    metadata = described["thingTypeMetadata"]
    check(metadata["deprecated"] is False, f"metadata: {metadata}")
    check(hasattr(metadata["creationDate"], "year"), f"creationDate is a timestamp: {metadata}")
    listed = iot.list_thing_types(thingTypeName="esp")["thingTypes"]
    check([t["thingTypeName"] for t in listed] == ["esp32"], f"list types: {listed}")

    iot.create_thing(thingName="board-1", thingTypeName="esp32", attributePayload={"attributes": {"room": "a"}})
    check(iot.describe_thing(thingName="board-1")["thingTypeName"] == "esp32", "thing has its type")
    typed = iot.list_things(thingTypeName="esp32")["things"]
    check([t["thingName"] for t in typed] == ["board-1"], f"type filter: {typed}")

    code, status, _ = error_of(iot.delete_thing_type, thingTypeName="esp32")
    check((code, status) == ("InvalidRequestException", 400), "delete needs deprecation")
    iot.deprecate_thing_type(thingTypeName="esp32")
    check(iot.describe_thing_type(thingTypeName="esp32")["thingTypeMetadata"]["deprecated"], "deprecated")
    code, status, response = error_of(iot.create_thing, thingName="board-2", thingTypeName="esp32")
    check((code, status) == ("InvalidRequestException", 400), f"deprecated type: {response}")
    code, _, _ = error_of(iot.delete_thing_type, thingTypeName="esp32")
    check(code == "InvalidRequestException", "type still in use")
    iot.update_thing(thingName="board-1", removeThingType=True)
    iot.delete_thing_type(thingTypeName="esp32")
    code, status, _ = error_of(iot.describe_thing_type, thingTypeName="esp32")
    check((code, status) == ("ResourceNotFoundException", 404), "type deleted")


def thing_groups_flow(iot, region, account):
    root = iot.create_thing_group(
        thingGroupName="building",
        thingGroupProperties={"thingGroupDescription": "HQ", "attributePayload": {"attributes": {"city": "Berlin"}}},
        tags=[{"Key": "env", "Value": "dev"}],
    )
    again = iot.create_thing_group(
        thingGroupName="building",
        thingGroupProperties={"thingGroupDescription": "HQ", "attributePayload": {"attributes": {"city": "Berlin"}}},
    )
    check(again["thingGroupId"] == root["thingGroupId"], "idempotent group")
    iot.create_thing_group(thingGroupName="floor-1", parentGroupName="building")
    iot.create_thing_group(thingGroupName="room-1", parentGroupName="floor-1")
    described = iot.describe_thing_group(thingGroupName="room-1")
    metadata = described["thingGroupMetadata"]
    check(metadata["parentGroupName"] == "floor-1", f"parent: {metadata}")
    check(
        [g["groupName"] for g in metadata["rootToParentThingGroups"]] == ["building", "floor-1"],
        f"root to parent: {metadata}",
    )
    check(described["version"] == 1, f"version: {described}")
    updated = iot.update_thing_group(
        thingGroupName="building",
        thingGroupProperties={"thingGroupDescription": "Headquarters"},
        expectedVersion=1,
    )
    check(updated["version"] == 2, f"update version: {updated}")
    code, status, _ = error_of(
        iot.update_thing_group, thingGroupName="building", thingGroupProperties={}, expectedVersion=1
    )
    check((code, status) == ("VersionConflictException", 409), "group version conflict")

    iot.create_thing(thingName="sensor-a")
    iot.create_thing(thingName="sensor-b")
    iot.add_thing_to_thing_group(thingGroupName="room-1", thingName="sensor-a")
    iot.add_thing_to_thing_group(
        thingGroupArn=f"arn:aws:iot:{region}:{account}:thinggroup/room-1",
        thingArn=f"arn:aws:iot:{region}:{account}:thing/sensor-a",
    )
    iot.update_thing_groups_for_thing(thingName="sensor-b", thingGroupsToAdd=["floor-1"])
    direct = iot.list_things_in_thing_group(thingGroupName="building")["things"]
    check(direct == [], f"no direct members: {direct}")
    recursive = iot.list_things_in_thing_group(thingGroupName="building", recursive=True)["things"]
    check(sorted(recursive) == ["sensor-a", "sensor-b"], f"recursive members: {recursive}")
    groups = iot.list_thing_groups_for_thing(thingName="sensor-a")["thingGroups"]
    check([g["groupName"] for g in groups] == ["room-1"], f"groups for thing: {groups}")
    children = iot.list_thing_groups(parentGroup="building", recursive=False)["thingGroups"]
    check([g["groupName"] for g in children] == ["floor-1"], f"children: {children}")
    prefixed = iot.list_thing_groups(namePrefixFilter="room")["thingGroups"]
    check([g["groupName"] for g in prefixed] == ["room-1"], f"prefix: {prefixed}")
    iot.remove_thing_from_thing_group(thingGroupName="room-1", thingName="sensor-a")
    iot.remove_thing_from_thing_group(thingGroupName="room-1", thingName="sensor-a")
    check(iot.list_thing_groups_for_thing(thingName="sensor-a")["thingGroups"] == [], "removed")

    code, status, _ = error_of(iot.delete_thing_group, thingGroupName="floor-1")
    check((code, status) == ("InvalidRequestException", 400), "group with children")
    iot.delete_thing_group(thingGroupName="room-1")
    iot.delete_thing_group(thingGroupName="room-1")
    code, status, _ = error_of(iot.describe_thing_group, thingGroupName="room-1")
    check((code, status) == ("ResourceNotFoundException", 404), "group deleted")


def tags_flow(iot, region, account):
    arn = f"arn:aws:iot:{region}:{account}:thinggroup/building"
    tags = iot.list_tags_for_resource(resourceArn=arn)["tags"]
    check(tags == [{"Key": "env", "Value": "dev"}], f"inline tags: {tags}")
    iot.tag_resource(resourceArn=arn, tags=[{"Key": "env", "Value": "prod"}, {"Key": "owner", "Value": "ops"}])
    tags = iot.list_tags_for_resource(resourceArn=arn)["tags"]
    check(tags == [{"Key": "env", "Value": "prod"}, {"Key": "owner", "Value": "ops"}], f"tagged: {tags}")
    iot.untag_resource(resourceArn=arn, tagKeys=["env"])
    tags = iot.list_tags_for_resource(resourceArn=arn)["tags"]
    check(tags == [{"Key": "owner", "Value": "ops"}], f"untagged: {tags}")
    missing = f"arn:aws:iot:{region}:{account}:thinggroup/nope"
    code, status, _ = error_of(iot.list_tags_for_resource, resourceArn=missing)
    check((code, status) == ("ResourceNotFoundException", 404), f"unknown ARN: {code}")


def main():
    iot = boto3.client("iot", config=Config(retries={"max_attempts": 1}))
    region = iot.meta.region_name
    # The account is whatever thingd uses: read it from an ARN it returns.
    probe = iot.create_thing(thingName="probe")
    account = probe["thingArn"].split(":")[4]
    iot.delete_thing(thingName="probe")

    endpoint = cli_flow((region, account))
    check(iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == endpoint, "same endpoint")
    check(iot.describe_endpoint()["endpointAddress"] == endpoint, "endpoint without a type")
    code, status, _ = error_of(iot.describe_endpoint, endpointType="iot:Nope")
    check((code, status) == ("InvalidRequestException", 400), "unknown endpoint type")
    things_flow(iot, region, account)
    thing_types_flow(iot, region, account)
    thing_groups_flow(iot, region, account)
    tags_flow(iot, region, account)
    print(f"ok {CHECKS} checks")


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - report any failure with its traceback
        traceback.print_exc()
        print(f"FAILED after {CHECKS} checks", file=sys.stderr)
        sys.exit(1)
