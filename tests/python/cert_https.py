"""A device reads and writes its shadow over HTTPS with its client certificate (no SigV4), as
AWS IoT devices do on port 8443; what its policy does not allow is 403 ForbiddenException."""
import json
import os
import ssl
import http.client

host, port = "localhost", int(os.environ["THINGD_HTTPS_PORT"])
context = ssl.create_default_context(cafile=os.environ["THINGD_ROOT_CA"])
context.load_cert_chain(os.environ["DEVICE_CERT"], os.environ["DEVICE_KEY"])
thing = os.environ["THING"]


def call(method, path, body=None):
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheader("x-amzn-ErrorType"), data


status, _, body = call("POST", f"/things/{thing}/shadow", json.dumps({"state": {"reported": {"temp": 30}}}))
assert status == 200, (status, body)
status, _, body = call("GET", f"/things/{thing}/shadow")
assert status == 200, (status, body)
assert json.loads(body)["state"]["reported"]["temp"] == 30, body
status, kind, body = call("GET", "/things/SomeoneElse/shadow")
assert status == 403 and kind.startswith("ForbiddenException"), (status, kind, body)
status, kind, body = call("POST", "/topics/not%2Fmine?qos=1", b"x")
assert status == 403, (status, kind, body)
status, _, body = call("POST", f"/topics/things%2F{thing}%2Ftelemetry?qos=1", b"{}")
assert status == 200, (status, body)
print("ok cert https")
