#!/usr/bin/env python3
"""The Device Shadow flows of the AWS IoT Device SDK v2 for Python (`awsiotsdk`, its
`awsiot.iotshadow.IotShadowClient`) against a running thingd, over mutual TLS.

Usage:
    awsiotsdk_shadow.py --protocol 311|5 --endpoint localhost --port P --ca root-ca.pem \
        --cert certificate.pem.crt --key private.pem.key --thing NAME

`--protocol 311` connects with `mqtt_connection_builder.mtls_from_path` (MQTT 3.1.1);
`--protocol 5` with `mqtt5_client_builder.mtls_from_path` (MQTT 5), the shadow client then
running on the MQTT 5 client. The flow: subscribe to the response topics, update reported,
update desired and receive the delta, get, a version conflict, a named shadow, delete, and
get after delete. Every check is made here; a failed check exits with status 1 and a message
on stderr. The last stdout line is {"result": {...}} with what was observed.
"""

import argparse
import json
import queue
import sys
import threading
import uuid
from concurrent.futures import Future

from awscrt import mqtt, mqtt5
from awsiot import iotshadow, mqtt5_client_builder, mqtt_connection_builder

WAIT = 10.0
QOS1 = mqtt.QoS.AT_LEAST_ONCE


class Check(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Check(what)


def connect(args):
    """Returns (connection-or-client, stop function)."""
    client_id = f"{args.thing}-sdk{args.protocol}-{uuid.uuid4().hex[:6]}"
    if args.protocol == "311":
        conn = mqtt_connection_builder.mtls_from_path(
            endpoint=args.endpoint,
            port=args.port,
            cert_filepath=args.cert,
            pri_key_filepath=args.key,
            ca_filepath=args.ca,
            client_id=client_id,
            clean_session=True,
            keep_alive_secs=30,
        )
        conn.connect().result(WAIT)
        return conn, lambda: conn.disconnect().result(WAIT)

    connected = Future()
    stopped = Future()

    def on_success(data):
        if not connected.done():
            connected.set_result(data)

    def on_failure(data):
        if not connected.done():
            connected.set_exception(RuntimeError(f"MQTT 5 connection failed: {data.exception}"))

    def on_stopped(data):
        if not stopped.done():
            stopped.set_result(True)

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=args.endpoint,
        port=args.port,
        cert_filepath=args.cert,
        pri_key_filepath=args.key,
        ca_filepath=args.ca,
        client_id=client_id,
        on_lifecycle_connection_success=on_success,
        on_lifecycle_connection_failure=on_failure,
        on_lifecycle_stopped=on_stopped,
    )
    client.start()
    connected.result(WAIT)

    def stop():
        client.stop()
        stopped.result(WAIT)

    return client, stop


class Inbox:
    """Collects the events of every subscription as (kind, object) in arrival order."""

    def __init__(self):
        self.q = queue.Queue()
        self.lock = threading.Lock()

    def handler(self, kind):
        def on_event(event):
            self.q.put((kind, event))
        return on_event

    def next(self, kind, what):
        """The next event of `kind`; events of other kinds that come first are skipped only
        if they are `documents` events (those come with every update)."""
        while True:
            try:
                got_kind, event = self.q.get(timeout=WAIT)
            except queue.Empty:
                raise Check(f"no {kind} event within {WAIT}s ({what})")
            if got_kind == kind:
                expect(event is not None, f"{kind} event could not be parsed ({what})")
                return event
            if got_kind in ("documents", "named_documents"):
                continue
            raise Check(f"expected {kind} ({what}), got {got_kind}: {event}")

    def quiet(self, kinds, seconds=0.5):
        """Checks that no event of `kinds` arrives for `seconds`."""
        try:
            while True:
                kind, event = self.q.get(timeout=seconds)
                expect(kind not in kinds, f"unexpected {kind} event: {event}")
        except queue.Empty:
            pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["311", "5"], required=True)
    parser.add_argument("--endpoint", default="localhost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--thing", required=True)
    args = parser.parse_args()

    conn, stop = connect(args)
    shadow = iotshadow.IotShadowClient(conn)
    thing = args.thing
    named = "settings"
    inbox = Inbox()
    observed = {"protocol": args.protocol}

    subs = [
        shadow.subscribe_to_update_shadow_accepted(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), QOS1, inbox.handler("update_accepted")),
        shadow.subscribe_to_update_shadow_rejected(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), QOS1, inbox.handler("update_rejected")),
        shadow.subscribe_to_shadow_delta_updated_events(
            iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing), QOS1, inbox.handler("delta")),
        shadow.subscribe_to_shadow_updated_events(
            iotshadow.ShadowUpdatedSubscriptionRequest(thing_name=thing), QOS1, inbox.handler("documents")),
        shadow.subscribe_to_get_shadow_accepted(
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), QOS1, inbox.handler("get_accepted")),
        shadow.subscribe_to_get_shadow_rejected(
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), QOS1, inbox.handler("get_rejected")),
        shadow.subscribe_to_delete_shadow_accepted(
            iotshadow.DeleteShadowSubscriptionRequest(thing_name=thing), QOS1, inbox.handler("delete_accepted")),
        shadow.subscribe_to_delete_shadow_rejected(
            iotshadow.DeleteShadowSubscriptionRequest(thing_name=thing), QOS1, inbox.handler("delete_rejected")),
        shadow.subscribe_to_update_named_shadow_accepted(
            iotshadow.UpdateNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=named), QOS1,
            inbox.handler("named_update_accepted")),
        shadow.subscribe_to_named_shadow_delta_updated_events(
            iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest(thing_name=thing, shadow_name=named), QOS1,
            inbox.handler("named_delta")),
        shadow.subscribe_to_named_shadow_updated_events(
            iotshadow.NamedShadowUpdatedSubscriptionRequest(thing_name=thing, shadow_name=named), QOS1,
            inbox.handler("named_documents")),
        shadow.subscribe_to_get_named_shadow_accepted(
            iotshadow.GetNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=named), QOS1,
            inbox.handler("named_get_accepted")),
    ]
    for future, topic in subs:
        future.result(WAIT)

    # 1. A get before anything exists: 404 with the thing's name.
    shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing, client_token="g0"), QOS1).result(WAIT)
    rej = inbox.next("get_rejected", "get before create")
    expect(rej.code == 404, f"get before create: code {rej.code}")
    expect(rej.message == f"No shadow exists with name: '{thing}'", f"get before create: {rej.message}")
    expect(rej.client_token == "g0", "get rejection echoes the token")

    # 2. The device reports.
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported={"temp": "32"}), client_token="u1"), QOS1).result(WAIT)
    acc = inbox.next("update_accepted", "report")
    expect(acc.version == 1 and acc.client_token == "u1", f"report accepted: {acc}")
    expect(acc.state.reported == {"temp": "32"}, f"report state: {acc.state}")
    expect(acc.metadata.reported["temp"]["timestamp"] > 0, "metadata timestamp")
    observed["first_version"] = acc.version

    # 3. Desired differs: accepted, then the delta.
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(desired={"temp": "20", "fan": "on"}), client_token="u2"),
        QOS1).result(WAIT)
    acc = inbox.next("update_accepted", "desired")
    expect(acc.version == 2, f"desired version {acc.version}")
    delta = inbox.next("delta", "desired")
    expect(delta.state == {"temp": "20", "fan": "on"}, f"delta state {delta.state}")
    expect(delta.version == 2, f"delta version {delta.version}")
    observed["delta"] = delta.state

    # 4. Get shows desired, reported and the delta.
    shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing, client_token="g1"), QOS1).result(WAIT)
    got = inbox.next("get_accepted", "get")
    expect(got.version == 2 and got.client_token == "g1", f"get: {got}")
    expect(got.state.desired == {"temp": "20", "fan": "on"}, f"get desired {got.state.desired}")
    expect(got.state.reported == {"temp": "32"}, f"get reported {got.state.reported}")
    expect(got.state.delta == {"temp": "20", "fan": "on"}, f"get delta {got.state.delta}")

    # 5. The device catches up: no delta is published.
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported={"temp": "20", "fan": "on"})), QOS1).result(WAIT)
    acc = inbox.next("update_accepted", "catch up")
    expect(acc.version == 3, f"catch-up version {acc.version}")
    inbox.quiet({"delta"})

    # 6. A stale version is refused with 409.
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported={"temp": "21"}), version=1, client_token="u4"),
        QOS1).result(WAIT)
    rej = inbox.next("update_rejected", "stale version")
    expect(rej.code == 409 and rej.message == "Version conflict", f"409: {rej}")
    expect(rej.client_token == "u4", "409 echoes the token")

    # 7. A named shadow, separate from the classic one.
    shadow.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name=named, state=iotshadow.ShadowState(desired={"interval": 5}),
        client_token="n1"), QOS1).result(WAIT)
    acc = inbox.next("named_update_accepted", "named update")
    expect(acc.version == 1, f"named version {acc.version}")
    nd = inbox.next("named_delta", "named delta")
    expect(nd.state == {"interval": 5}, f"named delta {nd.state}")
    shadow.publish_get_named_shadow(iotshadow.GetNamedShadowRequest(
        thing_name=thing, shadow_name=named, client_token="n2"), QOS1).result(WAIT)
    got = inbox.next("named_get_accepted", "named get")
    expect(got.state.desired == {"interval": 5} and got.state.reported is None, f"named get {got.state}")

    # 8. Delete the classic shadow: the version is kept in the answer; then get is 404.
    shadow.publish_delete_shadow(iotshadow.DeleteShadowRequest(thing_name=thing, client_token="d1"), QOS1).result(WAIT)
    deleted = inbox.next("delete_accepted", "delete")
    expect(deleted.version == 3 and deleted.client_token == "d1", f"delete: {deleted}")
    shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name=thing, client_token="g2"), QOS1).result(WAIT)
    rej = inbox.next("get_rejected", "get after delete")
    expect(rej.code == 404, f"get after delete: {rej}")
    shadow.publish_delete_shadow(iotshadow.DeleteShadowRequest(thing_name=thing, client_token="d2"), QOS1).result(WAIT)
    rej = inbox.next("delete_rejected", "delete again")
    expect(rej.code == 404, f"delete again: {rej}")

    # 9. Re-created at once: the version continues.
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, state=iotshadow.ShadowState(reported={"temp": "19"})), QOS1).result(WAIT)
    acc = inbox.next("update_accepted", "re-create")
    expect(acc.version == 4, f"re-created version {acc.version}")
    observed["recreated_version"] = acc.version

    stop()
    print(json.dumps({"result": observed}), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Check as failure:
        print(f"check failed: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
