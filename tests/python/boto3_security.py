"""The security half of the iot control plane (certificates, CA certificates, policies,
policy targets, thing principals), driven by the real AWS tools against thingd, and the
certificates it hands out used for MQTT over mutual TLS with paho-mqtt.

boto3 and the AWS CLI (v1) find thingd through the environment the Rust test sets:
AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE (region, endpoint_url) and AWS_ENDPOINT_URL.
THINGD_MQTTS is the MQTT-over-TLS address (host:port) and THINGD_ROOT_CA the root CA file.
Every check is an assert; the script prints "ok <n> checks" and exits 0 when all pass, or
prints the failing check and exits 1.
"""

import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import traceback

import boto3
import paho.mqtt.client as mqtt
from botocore.config import Config
from botocore.exceptions import ClientError

CHECKS = 0
WORK = tempfile.mkdtemp(prefix="thingd-security-")
MQTTS_HOST, MQTTS_PORT = os.environ["THINGD_MQTTS"].rsplit(":", 1)
ROOT_CA = os.environ["THINGD_ROOT_CA"]

ALLOW_ALL = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "*"},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "*"},
        ],
    }
)


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


def expect_error(code, status, call, *args, **kwargs):
    got, got_status, response = error_of(call, *args, **kwargs)
    check((got, got_status) == (code, status), f"{call.__name__}: expected {code} {status}, got {got} {got_status}: {response}")
    return response


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


def path(name):
    return os.path.join(WORK, name)


def write(name, text):
    with open(path(name), "w") as f:
        f.write(text)
    return path(name)


def read(name):
    with open(path(name)) as f:
        return f.read()


def openssl(*args):
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr}")
    return done.stdout


OPENSSL_CONFIG = """
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[leaf]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
"""


def make_key(name):
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path(name + ".key"))
    return path(name + ".key")


def make_csr(name, cn):
    make_key(name)
    openssl("req", "-new", "-key", path(name + ".key"), "-subj", f"/CN={cn}", "-out", path(name + ".csr"))
    return read(name + ".csr")


def make_self_signed(name, cn, ca=False):
    config = write("openssl.cnf", OPENSSL_CONFIG)
    make_key(name)
    openssl(
        "req", "-x509", "-new", "-key", path(name + ".key"), "-subj", f"/CN={cn}", "-days", "30",
        "-config", config, "-extensions", "v3_ca" if ca else "leaf", "-out", path(name + ".pem"),
    )
    return read(name + ".pem")


def sign_with(ca, name, cn):
    """A certificate for a new key with subject CN `cn`, signed by CA `ca`."""
    config = write("openssl.cnf", OPENSSL_CONFIG)
    make_csr(name, cn)
    openssl(
        "x509", "-req", "-in", path(name + ".csr"), "-CA", path(ca + ".pem"), "-CAkey", path(ca + ".key"),
        "-CAcreateserial", "-days", "30", "-extfile", config, "-extensions", "leaf", "-out", path(name + ".pem"),
    )
    return read(name + ".pem")


def allow_mqtt(iot, cert_arn):
    """Attaches the allow-all policy (created on first use) to a certificate, as a device
    needs a policy to connect."""
    try:
        iot.create_policy(policyName="mqtt-all", policyDocument=ALLOW_ALL)
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise
    iot.attach_policy(policyName="mqtt-all", target=cert_arn)


def mqtt_roundtrip(cert_file, key_file, client_id, topic):
    """Connects over mutual TLS, subscribes, publishes and waits for the message to come back.
    Returns None on success, or what went wrong."""
    connected = threading.Event()
    subscribed = threading.Event()
    received = threading.Event()
    outcome = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=ROOT_CA, certfile=cert_file, keyfile=key_file, cert_reqs=ssl.CERT_REQUIRED)

    def on_connect(c, userdata, flags, reason_code, properties):
        outcome["connect"] = str(reason_code)
        if not reason_code.is_failure:
            connected.set()

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(c, userdata, message):
        outcome["payload"] = message.payload.decode()
        received.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(MQTTS_HOST, int(MQTTS_PORT), keepalive=30)
    except (ssl.SSLError, OSError) as e:
        return f"TLS/connect failed: {e!r}"
    client.loop_start()
    try:
        if not connected.wait(10):
            return f"no CONNACK: {outcome}"
        client.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            return "no SUBACK"
        client.publish(topic, b"hello from " + client_id.encode(), qos=1)
        if not received.wait(10):
            return "message not received"
        if outcome.get("payload") != "hello from " + client_id:
            return f"wrong payload {outcome}"
        return None
    finally:
        client.disconnect()
        client.loop_stop()


def getting_started_with_the_cli():
    """The AWS IoT getting-started flow, with the AWS CLI, then MQTT with the certificate."""
    created = aws(
        "create-keys-and-certificate", "--set-as-active",
        "--certificate-pem-outfile", path("dev.pem"),
        "--public-key-outfile", path("dev.pub"),
        "--private-key-outfile", path("dev.key"),
    )
    cert_arn = created["certificateArn"]
    cert_id = created["certificateId"]
    check(len(cert_id) == 64 and cert_arn.endswith("cert/" + cert_id), f"create-keys-and-certificate: {created}")
    check("PRIVATE KEY" in read("dev.key") and "BEGIN CERTIFICATE" in read("dev.pem"), "key and certificate files")
    check("PUBLIC KEY" in read("dev.pub"), "public key file")
    problem = mqtt_roundtrip(path("dev.pem"), path("dev.key"), "GettingStartedThing", "gs/hello")
    check(problem is not None, "without a policy the certificate cannot connect")
    write("policy.json", ALLOW_ALL)
    policy = aws("create-policy", "--policy-name", "GettingStarted", "--policy-document", "file://" + path("policy.json"))
    check(policy["policyVersionId"] == "1", f"create-policy: {policy}")
    aws("attach-policy", "--policy-name", "GettingStarted", "--target", cert_arn)
    aws("create-thing", "--thing-name", "GettingStartedThing")
    aws("attach-thing-principal", "--thing-name", "GettingStartedThing", "--principal", cert_arn)
    principals = aws("list-thing-principals", "--thing-name", "GettingStartedThing")
    check(principals["principals"] == [cert_arn], f"list-thing-principals: {principals}")
    things = aws("list-principal-things", "--principal", cert_arn)
    check(things["things"] == ["GettingStartedThing"], f"list-principal-things: {things}")
    attached = aws("list-attached-policies", "--target", cert_arn)
    check([p["policyName"] for p in attached["policies"]] == ["GettingStarted"], f"list-attached-policies: {attached}")
    endpoint = aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS")
    check(endpoint.get("endpointAddress"), f"describe-endpoint: {endpoint}")
    described = aws("describe-certificate", "--certificate-id", cert_id)
    check(described["certificateDescription"]["status"] == "ACTIVE", f"describe-certificate: {described}")

    problem = mqtt_roundtrip(path("dev.pem"), path("dev.key"), "GettingStartedThing", "gs/hello")
    check(problem is None, f"MQTT with the CLI-created certificate: {problem}")

    # The main refusals, as the CLI reports them.
    stderr = aws_fails("delete-certificate", "--certificate-id", cert_id)
    check("CertificateStateException" in stderr, f"delete-certificate ACTIVE: {stderr}")
    stderr = aws_fails("delete-policy", "--policy-name", "GettingStarted")
    check("DeleteConflictException" in stderr, f"delete-policy attached: {stderr}")
    write("bad.json", '{"Version": "2012-10-17", "Statement": [{"Effect": "Maybe"}]}')
    stderr = aws_fails("create-policy", "--policy-name", "Bad", "--policy-document", "file://" + path("bad.json"))
    check("MalformedPolicyException" in stderr, f"create-policy malformed: {stderr}")

    # Turn it off: MQTT is refused; tidy up.
    aws("update-certificate", "--certificate-id", cert_id, "--new-status", "INACTIVE")
    aws("detach-thing-principal", "--thing-name", "GettingStartedThing", "--principal", cert_arn)
    aws("detach-policy", "--policy-name", "GettingStarted", "--target", cert_arn)
    aws("delete-certificate", "--certificate-id", cert_id)
    aws("delete-policy", "--policy-name", "GettingStarted")
    aws("delete-thing", "--thing-name", "GettingStartedThing")
    problem = mqtt_roundtrip(path("dev.pem"), path("dev.key"), "GettingStartedThing", "gs/hello")
    check(problem is not None, "a deleted certificate no longer connects")


def certificates(iot, region, account):
    cert = iot.create_keys_and_certificate(setAsActive=False)
    cid = cert["certificateId"]
    check(set(cert["keyPair"]) == {"PublicKey", "PrivateKey"}, f"keyPair: {cert['keyPair'].keys()}")
    check(cert["certificateArn"] == f"arn:aws:iot:{region}:{account}:cert/{cid}", f"arn: {cert}")
    d = iot.describe_certificate(certificateId=cid)["certificateDescription"]
    check(d["status"] == "INACTIVE", f"created INACTIVE: {d}")
    check(d["ownedBy"] == account and d["certificateMode"] == "DEFAULT", f"describe: {d}")
    check(d["creationDate"].year >= 2025 and d["validity"]["notAfter"].year == 2049, f"dates: {d}")
    iot.update_certificate(certificateId=cid, newStatus="ACTIVE")
    iot.update_certificate(certificateId=cid, newStatus="ACTIVE")
    expect_error("CertificateStateException", 406, iot.delete_certificate, certificateId=cid)
    expect_error("ResourceNotFoundException", 404, iot.describe_certificate, certificateId="0" * 64)
    expect_error("InvalidRequestException", 400, iot.update_certificate, certificateId=cid, newStatus="PENDING_TRANSFER")

    # From a CSR: a new certificate each time, no key pair.
    csr = make_csr("csr", "csr-device")
    a = iot.create_certificate_from_csr(certificateSigningRequest=csr, setAsActive=True)
    b = iot.create_certificate_from_csr(certificateSigningRequest=csr)
    check(a["certificateId"] != b["certificateId"] and "keyPair" not in a, f"csr: {a} {b}")
    write("csr.pem", a["certificatePem"])
    allow_mqtt(iot, a["certificateArn"])
    problem = mqtt_roundtrip(path("csr.pem"), path("csr.key"), "csr-device", "csr/t")
    check(problem is None, f"MQTT with the CSR certificate: {problem}")
    expect_error("InvalidRequestException", 400, iot.create_certificate_from_csr, certificateSigningRequest="nonsense")

    # Without a CA: a self-signed device certificate, usable over mutual TLS.
    self_signed = make_self_signed("selfsigned", "self-signed-device")
    reg = iot.register_certificate_without_ca(certificatePem=self_signed, status="ACTIVE")
    d = iot.describe_certificate(certificateId=reg["certificateId"])["certificateDescription"]
    check(d["certificateMode"] == "SNI_ONLY" and d["status"] == "ACTIVE", f"no-CA describe: {d}")
    response = expect_error(
        "ResourceAlreadyExistsException", 409, iot.register_certificate_without_ca, certificatePem=self_signed
    )
    check(response.get("resourceId") == reg["certificateId"], f"resourceId: {response}")
    allow_mqtt(iot, reg["certificateArn"])
    problem = mqtt_roundtrip(path("selfsigned.pem"), path("selfsigned.key"), "self-signed", "nca/t")
    check(problem is None, f"MQTT with a certificate registered without CA: {problem}")
    expect_error("CertificateValidationException", 400, iot.register_certificate, certificatePem=self_signed)
    expect_error("CertificateValidationException", 400, iot.register_certificate_without_ca, certificatePem="junk")

    # Listing: marker/pageSize, oldest first when asked.
    listed, marker = [], None
    while True:
        kwargs = {"pageSize": 2, "ascendingOrder": True}
        if marker:
            kwargs["marker"] = marker
        page = iot.list_certificates(**kwargs)
        listed += [c["certificateId"] for c in page["certificates"]]
        marker = page.get("nextMarker")
        if not marker:
            break
    check(len(listed) == 4 and listed[0] == cid, f"list-certificates pages: {listed}")
    check(len(set(listed)) == 4, "no repeats across pages")
    paginated = [c["certificateId"] for p in iot.get_paginator("list_certificates").paginate(PaginationConfig={"PageSize": 1}) for c in p["certificates"]]
    check(sorted(paginated) == sorted(listed), f"paginator: {paginated}")

    iot.update_certificate(certificateId=cid, newStatus="REVOKED")
    expect_error("CertificateStateException", 406, iot.update_certificate, certificateId=cid, newStatus="ACTIVE")
    iot.delete_certificate(certificateId=cid)
    expect_error("ResourceNotFoundException", 404, iot.delete_certificate, certificateId=cid)


def ca_certificates(iot):
    code = iot.get_registration_code()["registrationCode"]
    check(len(code) == 64 and iot.get_registration_code()["registrationCode"] == code, "stable registration code")
    ca_pem = make_self_signed("ca", "Customer Root CA", ca=True)
    wrong = sign_with("ca", "wrong", "not-the-code")
    expect_error(
        "RegistrationCodeValidationException", 400, iot.register_ca_certificate,
        caCertificate=ca_pem, verificationCertificate=wrong,
    )
    expect_error("InvalidRequestException", 400, iot.register_ca_certificate, caCertificate=ca_pem)
    verification = sign_with("ca", "verification", code)
    ca = iot.register_ca_certificate(
        caCertificate=ca_pem, verificationCertificate=verification, setAsActive=True, allowAutoRegistration=True,
        registrationConfig={"templateName": "JITP"},
    )
    ca_id = ca["certificateId"]
    check(":cacert/" in ca["certificateArn"], f"register-ca-certificate: {ca}")
    expect_error(
        "ResourceAlreadyExistsException", 409, iot.register_ca_certificate,
        caCertificate=ca_pem, verificationCertificate=verification,
    )
    described = iot.describe_ca_certificate(certificateId=ca_id)
    d = described["certificateDescription"]
    check(d["status"] == "ACTIVE" and d["autoRegistrationStatus"] == "ENABLE", f"describe-ca-certificate: {d}")
    check(described["registrationConfig"]["templateName"] == "JITP", f"registrationConfig: {described}")
    listed = iot.list_ca_certificates()["certificates"]
    check([c["certificateId"] for c in listed] == [ca_id], f"list-ca-certificates: {listed}")

    device = sign_with("ca", "cadevice", "ca-device")
    reg = iot.register_certificate(certificatePem=device, caCertificatePem=ca_pem, status="ACTIVE")
    d = iot.describe_certificate(certificateId=reg["certificateId"])["certificateDescription"]
    check(d["caCertificateId"] == ca_id, f"caCertificateId: {d}")
    by_ca = iot.list_certificates_by_ca(caCertificateId=ca_id)["certificates"]
    check([c["certificateId"] for c in by_ca] == [reg["certificateId"]], f"list-certificates-by-ca: {by_ca}")
    allow_mqtt(iot, reg["certificateArn"])
    problem = mqtt_roundtrip(path("cadevice.pem"), path("cadevice.key"), "ca-device", "ca/t")
    check(problem is None, f"MQTT with a certificate registered under a CA: {problem}")
    # Found without naming the CA.
    other = sign_with("ca", "cadevice2", "ca-device-2")
    iot.register_certificate(certificatePem=other, setAsActive=True)

    expect_error("CertificateStateException", 406, iot.delete_ca_certificate, certificateId=ca_id)
    iot.update_ca_certificate(certificateId=ca_id, newStatus="INACTIVE", newAutoRegistrationStatus="DISABLE")
    d = iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
    check(d["status"] == "INACTIVE" and d["autoRegistrationStatus"] == "DISABLE", f"update-ca-certificate: {d}")
    problem = mqtt_roundtrip(path("cadevice.pem"), path("cadevice.key"), "ca-device", "ca/t")
    check(problem is not None, "an INACTIVE CA's devices no longer connect")
    iot.delete_ca_certificate(certificateId=ca_id)
    expect_error("ResourceNotFoundException", 404, iot.describe_ca_certificate, certificateId=ca_id)
    iot.delete_registration_code()
    check(iot.get_registration_code()["registrationCode"] != code, "a new code after delete")


def policies(iot, region, account):
    doc = ALLOW_ALL
    created = iot.create_policy(policyName="p1", policyDocument=doc, tags=[{"Key": "env", "Value": "test"}])
    check(created["policyVersionId"] == "1" and created["policyArn"] == f"arn:aws:iot:{region}:{account}:policy/p1", f"create-policy: {created}")
    response = expect_error("ResourceAlreadyExistsException", 409, iot.create_policy, policyName="p1", policyDocument=doc)
    check("already exists" in response["Error"]["Message"], f"message: {response}")
    response = expect_error("MalformedPolicyException", 400, iot.create_policy, policyName="bad", policyDocument='{"Version": "2012-10-17",\n"Statement": [}')
    check("line 2" in response["Error"]["Message"], f"located message: {response['Error']['Message']}")
    big = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": "x" * 2100}]})
    expect_error("MalformedPolicyException", 400, iot.create_policy, policyName="big", policyDocument=big)
    tags = iot.list_tags_for_resource(resourceArn=created["policyArn"])["tags"]
    check(tags == [{"Key": "env", "Value": "test"}], f"policy tags: {tags}")

    got = iot.get_policy(policyName="p1")
    check(got["defaultVersionId"] == "1" and json.loads(got["policyDocument"]) == json.loads(doc), f"get-policy: {got}")
    deny = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "iot:Publish", "Resource": f"arn:aws:iot:{region}:{account}:topic/secret"}]})
    v2 = iot.create_policy_version(policyName="p1", policyDocument=deny, setAsDefault=True)
    check(v2["policyVersionId"] == "2" and v2["isDefaultVersion"], f"create-policy-version: {v2}")
    for _ in range(3):
        iot.create_policy_version(policyName="p1", policyDocument=doc)
    expect_error("VersionsLimitExceededException", 409, iot.create_policy_version, policyName="p1", policyDocument=doc)
    versions = iot.list_policy_versions(policyName="p1")["policyVersions"]
    check(sorted(v["versionId"] for v in versions) == ["1", "2", "3", "4", "5"], f"list-policy-versions: {versions}")
    check([v["versionId"] for v in versions if v["isDefaultVersion"]] == ["2"], "one default")
    v1 = iot.get_policy_version(policyName="p1", policyVersionId="1")
    check(not v1["isDefaultVersion"] and v1["policyName"] == "p1", f"get-policy-version: {v1}")
    expect_error("InvalidRequestException", 400, iot.delete_policy_version, policyName="p1", policyVersionId="2")
    iot.set_default_policy_version(policyName="p1", policyVersionId="1")
    check(iot.get_policy(policyName="p1")["defaultVersionId"] == "1", "set-default-policy-version")
    expect_error("DeleteConflictException", 409, iot.delete_policy, policyName="p1")
    for v in ["2", "3", "4", "5"]:
        iot.delete_policy_version(policyName="p1", policyVersionId=v)
    expect_error("ResourceNotFoundException", 404, iot.get_policy_version, policyName="p1", policyVersionId="5")
    check(iot.create_policy_version(policyName="p1", policyDocument=deny)["policyVersionId"] == "6", "ids are not reused")
    iot.delete_policy_version(policyName="p1", policyVersionId="6")

    iot.create_policy(policyName="deny", policyDocument=deny)
    names, marker = [], None
    while True:
        page = iot.list_policies(pageSize=1, **({"marker": marker} if marker else {}))
        names += [p["policyName"] for p in page["policies"]]
        marker = page.get("nextMarker")
        if not marker:
            break
    check([n for n in names if n != "mqtt-all"] == ["deny", "p1"], f"list-policies: {names}")

    # Targets.
    cert = iot.create_keys_and_certificate(setAsActive=True)
    arn = cert["certificateArn"]
    iot.attach_policy(policyName="p1", target=arn)
    iot.attach_policy(policyName="p1", target=arn)
    iot.attach_policy(policyName="deny", target=arn)
    expect_error("ResourceNotFoundException", 404, iot.attach_policy, policyName="nope", target=arn)
    expect_error("ResourceNotFoundException", 404, iot.attach_policy, policyName="p1", target=arn[:-64] + "f" * 64)
    attached = iot.list_attached_policies(target=arn)["policies"]
    check([p["policyName"] for p in attached] == ["deny", "p1"], f"list-attached-policies: {attached}")
    check(iot.list_targets_for_policy(policyName="p1")["targets"] == [arn], "list-targets-for-policy")
    expect_error("ResourceNotFoundException", 404, iot.list_targets_for_policy, policyName="nope")
    effective = iot.get_effective_policies(principal=arn)["effectivePolicies"]
    check(sorted(p["policyName"] for p in effective) == ["deny", "p1"], f"get-effective-policies: {effective}")

    # Thing groups as targets, recursively.
    iot.create_thing_group(thingGroupName="parent")
    iot.create_thing_group(thingGroupName="child", parentGroupName="parent")
    parent_arn = iot.describe_thing_group(thingGroupName="parent")["thingGroupArn"]
    child_arn = iot.describe_thing_group(thingGroupName="child")["thingGroupArn"]
    iot.attach_policy(policyName="deny", target=parent_arn)
    check(iot.list_attached_policies(target=child_arn)["policies"] == [], "child has none of its own")
    recursive = iot.list_attached_policies(target=child_arn, recursive=True)["policies"]
    check([p["policyName"] for p in recursive] == ["deny"], f"recursive: {recursive}")
    iot.create_thing(thingName="grouped")
    iot.add_thing_to_thing_group(thingGroupName="child", thingName="grouped")
    effective = iot.get_effective_policies(principal=arn, thingName="grouped")["effectivePolicies"]
    check(sorted(p["policyName"] for p in effective) == ["deny", "p1"], f"effective with thing: {effective}")
    iot.detach_policy(policyName="deny", target=parent_arn)

    results = iot.test_authorization(
        principal=arn,
        authInfos=[
            {"actionType": "PUBLISH", "resources": [f"arn:aws:iot:{region}:{account}:topic/open"]},
            {"actionType": "PUBLISH", "resources": [f"arn:aws:iot:{region}:{account}:topic/secret"]},
        ],
    )["authResults"]
    check(results[0]["authDecision"] == "ALLOWED", f"test-authorization allowed: {results[0]}")
    check(results[1]["authDecision"] == "EXPLICIT_DENY", f"test-authorization deny: {results[1]}")
    check(results[1]["denied"]["explicitDeny"]["policies"][0]["policyName"] == "deny", f"deciding policy: {results[1]}")
    results = iot.test_authorization(
        principal=arn, policyNamesToSkip=["p1", "deny"],
        authInfos=[{"actionType": "CONNECT", "resources": [f"arn:aws:iot:{region}:{account}:client/c1"]}],
    )["authResults"]
    check(results[0]["authDecision"] == "IMPLICIT_DENY", f"implicit deny: {results}")

    # Deprecated principal-policy operations share the storage.
    iot.detach_policy(policyName="deny", target=arn)
    iot.attach_principal_policy(policyName="deny", principal=arn)
    names = [p["policyName"] for p in iot.list_principal_policies(principal=arn)["policies"]]
    check(names == ["deny", "p1"], f"list-principal-policies: {names}")
    check(iot.list_policy_principals(policyName="deny")["principals"] == [arn], "list-policy-principals")
    iot.detach_principal_policy(policyName="deny", principal=arn)

    # Deleting a certificate with policies needs forceDelete.
    iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
    expect_error("DeleteConflictException", 409, iot.delete_certificate, certificateId=cert["certificateId"])
    iot.delete_certificate(certificateId=cert["certificateId"], forceDelete=True)
    check(iot.list_targets_for_policy(policyName="p1")["targets"] == [], "force delete detached the policy")
    iot.delete_policy(policyName="p1")
    iot.delete_policy(policyName="deny")
    expect_error("ResourceNotFoundException", 404, iot.get_policy, policyName="p1")


def principals(iot):
    iot.create_thing(thingName="t1")
    iot.create_thing(thingName="t2")
    cert = iot.create_keys_and_certificate(setAsActive=True)
    arn = cert["certificateArn"]
    iot.attach_thing_principal(thingName="t1", principal=arn)
    iot.attach_thing_principal(thingName="t1", principal=arn)
    iot.attach_thing_principal(thingName="t2", principal=arn)
    expect_error("ResourceNotFoundException", 404, iot.attach_thing_principal, thingName="nope", principal=arn)
    expect_error("ResourceNotFoundException", 404, iot.attach_thing_principal, thingName="t1", principal=arn[:-64] + "a" * 64)
    check(iot.list_thing_principals(thingName="t1")["principals"] == [arn], "list-thing-principals")
    response = expect_error("ResourceNotFoundException", 404, iot.list_thing_principals, thingName="nope")
    check("does not exist" in response["Error"]["Message"], f"message: {response}")
    page = iot.list_principal_things(principal=arn, maxResults=1)
    check(page["things"] == ["t1"] and page.get("nextToken"), f"list-principal-things page 1: {page}")
    page = iot.list_principal_things(principal=arn, maxResults=1, nextToken=page["nextToken"])
    check(page["things"] == ["t2"] and "nextToken" not in page, f"list-principal-things page 2: {page}")
    v2 = iot.list_thing_principals_v2(thingName="t1")["thingPrincipalObjects"]
    check(v2 == [{"principal": arn, "thingPrincipalType": "NON_EXCLUSIVE_THING"}], f"v2: {v2}")

    exclusive = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName="t2", principal=exclusive["certificateArn"], thingPrincipalType="EXCLUSIVE_THING")
    expect_error("InvalidRequestException", 400, iot.attach_thing_principal, thingName="t1", principal=exclusive["certificateArn"])
    things = iot.list_principal_things_v2(principal=exclusive["certificateArn"])["principalThingObjects"]
    check(things == [{"thingName": "t2", "thingPrincipalType": "EXCLUSIVE_THING"}], f"principal things v2: {things}")

    iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
    expect_error("DeleteConflictException", 409, iot.delete_certificate, certificateId=cert["certificateId"])
    for thing in ["t1", "t2"]:
        iot.detach_thing_principal(thingName=thing, principal=arn)
    iot.detach_thing_principal(thingName="t1", principal=arn)
    check(iot.list_principal_things(principal=arn)["things"] == [], "all detached")
    iot.delete_certificate(certificateId=cert["certificateId"])


def main():
    iot = boto3.client("iot", config=Config(retries={"max_attempts": 1}))
    region = iot.meta.region_name
    # The account: from the ARN of a throwaway policy.
    probe = iot.create_policy(policyName="probe", policyDocument=ALLOW_ALL)
    account = probe["policyArn"].split(":")[4]
    iot.delete_policy(policyName="probe")

    getting_started_with_the_cli()
    certificates(iot, region, account)
    ca_certificates(iot)
    policies(iot, region, account)
    principals(iot)
    print(f"ok {CHECKS} checks")


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - report whatever failed, with its traceback
        traceback.print_exc()
        print(f"FAILED after {CHECKS} checks", file=sys.stderr)
        sys.exit(1)
