#!/usr/bin/env python3
"""MQTT scenarios played by Eclipse paho-mqtt 2.x against a running thingd.

Usage:
    paho_scenarios.py SCENARIO --host H --port P --ca root-ca.pem --cert certificate.pem.crt \
        --key private.pem.key [options]

Every scenario connects over mutual TLS with the given device certificate. Progress events
are printed on stdout as one JSON object per line (for example {"event": "ready"} once a
subscriber holds its subscription); the last stdout line is {"result": {...}} with what the
clients observed. The Rust tests make the assertions on that result. A scenario that cannot
run at all (no CONNACK, a refused SUBSCRIBE, a missing PUBACK) prints a message on stderr and
exits with status 2; a global alarm ends any run that exceeds --timeout with status 3.
"""

import argparse
import hashlib
import json
import os
import queue
import signal
import socket
import ssl
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions


class ScenarioError(Exception):
    """A scenario could not be played (as opposed to an observation the caller judges)."""


def emit(obj):
    print(json.dumps(obj), flush=True)


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def props_dict(props):
    if props is None:
        return {}
    data = props.json()
    if "UserProperty" in data:
        data["UserProperty"] = [[k, v] for (k, v) in data["UserProperty"]]
    return data


def message_dict(msg):
    entry = {
        "topic": msg.topic,
        "payload": msg.payload.decode("utf-8", "replace"),
        "qos": msg.qos,
        "retain": bool(msg.retain),
        "dup": bool(msg.dup),
        "len": len(msg.payload),
        "sha256": hashlib.sha256(msg.payload).hexdigest(),
        "mid": msg.mid,
        "at": time.monotonic(),
    }
    props = getattr(msg, "properties", None)
    if props is not None:
        entry["properties"] = props_dict(props)
    return entry


def payloads(messages):
    return [m["payload"] for m in messages]


class Conn:
    """One paho client driven synchronously: every wait has a deadline."""

    def __init__(self, args, client_id, version=None, mode=None, port=None, clean_session=True,
                 client_cert=True, cert=None, key=None, manual_ack=False):
        self.args = args
        self.version = version or args.version
        self.mode = mode or args.mode
        self.port = port or args.port
        self.client_id = client_id
        protocol = mqtt.MQTTv5 if self.version == 5 else mqtt.MQTTv311
        extra = {} if self.version == 5 else {"clean_session": clean_session}
        transport = "websockets" if self.mode == "websockets" else "tcp"
        self.c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            transport=transport,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            **extra,
        )
        self.c.connect_timeout = 5.0
        if transport == "websockets":
            self.c.ws_set_options(path=args.ws_path)
        certfile = cert or args.cert
        keyfile = key or args.key
        if self.mode == "alpn":
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
            if client_cert:
                context.load_cert_chain(certfile, keyfile)
            context.set_alpn_protocols([args.alpn])
            self.c.tls_set_context(context)
        elif client_cert:
            self.c.tls_set(ca_certs=args.ca, certfile=certfile, keyfile=keyfile)
        else:
            self.c.tls_set(ca_certs=args.ca)

        self.lock = threading.Condition()
        self.connack = None
        self.connect_failed = False
        self.disconnected = threading.Event()
        self.disconnect_reason = None
        self.messages = queue.Queue()
        self.subacks = {}
        self.pubacks = {}
        self.c.on_connect = self._on_connect
        self.c.on_connect_fail = self._on_connect_fail
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish

    # callbacks (paho's network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            self.connack = {
                "session_present": bool(flags.session_present),
                "reason_code": reason_code.value,
                "properties": props_dict(properties) if self.version == 5 else {},
            }
            self.lock.notify_all()

    def _on_connect_fail(self, client, userdata):
        with self.lock:
            self.connect_failed = True
            self.lock.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code.value
        self.disconnected.set()
        with self.lock:
            self.lock.notify_all()

    def _on_message(self, client, userdata, msg):
        self.messages.put(message_dict(msg))

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties):
        with self.lock:
            self.subacks[mid] = [rc.value for rc in reason_code_list]
            self.lock.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.pubacks[mid] = reason_code.value
            self.lock.notify_all()

    def _wait(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True

    def will_set(self, topic, payload, qos=1, retain=False, properties=None):
        self.c.will_set(topic, payload, qos=qos, retain=retain, properties=properties)

    def start(self, clean_start=True, session_expiry=None, keepalive=60):
        """Opens the connection and sends CONNECT; raises what paho raises (TLS errors...)."""
        if self.version == 5:
            props = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                props.SessionExpiryInterval = session_expiry
            self.c.connect(self.args.host, self.port, keepalive, clean_start=clean_start, properties=props)
        else:
            self.c.connect(self.args.host, self.port, keepalive)
        self.c.loop_start()

    def connect(self, clean_start=True, session_expiry=None, keepalive=60):
        try:
            self.start(clean_start, session_expiry, keepalive)
        except Exception as error:  # noqa: BLE001 - reported as a scenario failure
            raise ScenarioError(
                f"{self.client_id}: connecting to {self.args.host}:{self.port} ({self.mode}, "
                f"MQTT {self.version}) failed: {type(error).__name__}: {error}") from error
        if not self._wait(lambda: self.connack is not None or self.connect_failed or self.disconnected.is_set(),
                          self.args.wait):
            raise ScenarioError(f"{self.client_id}: no CONNACK within {self.args.wait} s")
        if self.connack is None:
            raise ScenarioError(f"{self.client_id}: connection closed before CONNACK "
                                f"(disconnect reason {self.disconnect_reason})")
        if self.connack["reason_code"] != 0:
            raise ScenarioError(f"{self.client_id}: CONNACK refused: {self.connack}")
        return self.connack

    def subscribe(self, topic, qos):
        if self.version == 5:
            rc, mid = self.c.subscribe(topic, options=SubscribeOptions(qos=qos))
        else:
            rc, mid = self.c.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise ScenarioError(f"{self.client_id}: SUBSCRIBE {topic!r} not sent: {mqtt.error_string(rc)}")
        if not self._wait(lambda: mid in self.subacks, self.args.wait):
            raise ScenarioError(f"{self.client_id}: no SUBACK for {topic!r} within {self.args.wait} s")
        codes = self.subacks[mid]
        if any(code >= 0x80 for code in codes):
            raise ScenarioError(f"{self.client_id}: SUBSCRIBE {topic!r} refused: reason codes {codes}")
        return codes

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            raise ScenarioError(f"{self.client_id}: PUBLISH to {topic!r} failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(self.args.wait)
        except (RuntimeError, ValueError) as error:
            raise ScenarioError(f"{self.client_id}: PUBLISH to {topic!r} failed: {error}") from error
        if not info.is_published():
            what = {0: "sent", 1: "acknowledged (PUBACK)", 2: "completed (PUBCOMP)"}[qos]
            raise ScenarioError(f"{self.client_id}: PUBLISH {payload!r} to {topic!r} at QoS {qos} "
                                f"not {what} within {self.args.wait} s")
        if qos > 0:
            self._wait(lambda: info.mid in self.pubacks, 1.0)
            code = self.pubacks.get(info.mid, 0)
            if code >= 0x80:
                raise ScenarioError(f"{self.client_id}: PUBLISH to {topic!r} refused with reason code {code:#x}")
        return info

    def collect(self, count, timeout=None):
        """Messages received until `count` have arrived or `timeout` passed."""
        timeout = self.args.wait if timeout is None else timeout
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return got

    def quiet(self, duration):
        """Everything received during `duration` seconds."""
        return self.collect(1_000_000, duration)

    def disconnect(self):
        """A clean MQTT DISCONNECT."""
        self.c.disconnect()
        self.disconnected.wait(self.args.wait)
        self.c.loop_stop()

    def drop(self):
        """Closes the TCP connection under the client: no DISCONNECT, no TLS close_notify."""
        sock = self.c.socket()
        raw = getattr(sock, "_socket", sock)  # the websocket wrapper keeps the TLS socket here
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.disconnected.wait(self.args.wait)
        self.c.loop_stop()
        try:
            raw.close()
        except OSError:
            pass


def v5_props(packet_type, **values):
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def topic(args, default):
    return args.topic or unique(f"e2e/{default}")


# --- scenarios ----------------------------------------------------------------------------

def scenario_pubsub(args):
    """A subscriber and a publisher at one QoS; count messages, in order."""
    t = topic(args, "pubsub")
    sub = Conn(args, unique("sub"))
    sub.connect()
    sub_qos = args.qos if args.sub_qos is None else args.sub_qos
    granted = sub.subscribe(t, sub_qos)
    pub = Conn(args, unique("pub"))
    pub.connect()
    for i in range(args.count):
        pub.publish(t, f"m{i}", qos=args.qos)
    got = sub.collect(args.count)
    extra = sub.quiet(0.5)
    pub.disconnect()
    sub.disconnect()
    return {"granted": granted, "received": got, "extra": extra}


def scenario_subscribe(args):
    """Subscribes, prints {"event": "ready"}, then reports the messages that arrive."""
    t = topic(args, "sub")
    sub = Conn(args, args.client_id or unique("sub"))
    connack = sub.connect()
    granted = sub.subscribe(t, args.qos)
    emit({"event": "ready", "topic": t})
    got = sub.collect(args.count)
    extra = sub.quiet(0.3)
    sub.disconnect()
    return {"connack": connack, "granted": granted, "received": got, "extra": extra}


def scenario_publish(args):
    """Publishes count messages `<prefix><i>`, each acknowledged at QoS 1/2."""
    t = topic(args, "pub")
    pub = Conn(args, args.client_id or unique("pub"))
    connack = pub.connect()
    props = None
    if args.version == 5 and args.user_property:
        props = v5_props(PacketTypes.PUBLISH, UserProperty=[tuple(p.split("=", 1)) for p in args.user_property])
    sent = []
    for i in range(args.count):
        payload = args.payload if args.payload is not None else f"{args.prefix}{i}"
        pub.publish(t, payload, qos=args.qos, retain=args.retain, properties=props)
        sent.append(payload)
    pub.disconnect()
    return {"connack": connack, "sent": sent}


def scenario_persist_subscribe(args):
    """Starts a persistent session holding one subscription, then disconnects cleanly."""
    t = topic(args, "persist")
    s = Conn(args, args.client_id, clean_session=False)
    connack = s.connect(clean_start=True, session_expiry=args.session_expiry)
    granted = s.subscribe(t, args.qos)
    s.disconnect()
    return {"connack": connack, "granted": granted}


def scenario_persist_receive(args):
    """Resumes a persistent session and reports what it delivers."""
    s = Conn(args, args.client_id, clean_session=False)
    connack = s.connect(clean_start=False, session_expiry=args.session_expiry)
    got = s.collect(args.count)
    extra = s.quiet(0.5)
    s.disconnect()
    return {"connack": connack, "received": got, "extra": extra}


def scenario_persist_receive_unacked(args):
    """Resumes a persistent session, takes its messages without acknowledging them, and drops
    the connection (no PUBACK, no DISCONNECT): they must come again on the next resume."""
    s = Conn(args, args.client_id, clean_session=False, manual_ack=True)
    connack = s.connect(clean_start=False, session_expiry=args.session_expiry)
    got = s.collect(args.count)
    s.drop()
    return {"connack": connack, "received": got}


def scenario_unacked_redelivery(args):
    """A QoS 1 message delivered but never acknowledged is sent again when the persistent
    session resumes, and acknowledged ones are not."""
    t = topic(args, "unacked")
    sid = unique("forgetful")
    s = Conn(args, sid, clean_session=False, manual_ack=True)
    s.connect(clean_start=True, session_expiry=120)
    s.subscribe(t, 1)
    pub = Conn(args, unique("pub"))
    pub.connect()
    pub.publish(t, "acked", qos=1)
    first = s.collect(1)
    if first:
        s.c.ack(first[0]["mid"], first[0]["qos"])
    time.sleep(0.3)
    pub.publish(t, "never-acked", qos=1)
    second = s.collect(1)
    s.drop()
    again = Conn(args, sid, clean_session=False)
    resumed = again.connect(clean_start=False, session_expiry=120)
    redelivered = again.collect(1)
    extra = again.quiet(0.5)
    again.disconnect()
    pub.disconnect()
    return {"first_connection": first + second, "resumed_connack": resumed, "redelivered": redelivered + extra}


def scenario_retain_get(args):
    """A new subscriber on one topic: what is delivered on SUBSCRIBE."""
    t = topic(args, "retain")
    s = Conn(args, unique("retain-get"))
    s.connect()
    s.subscribe(t, args.qos)
    got = s.collect(1, args.wait)
    extra = s.quiet(0.3)
    s.disconnect()
    return {"received": got + extra}


def scenario_retained(args):
    """Retained set, replace, live delivery, delete."""
    t = topic(args, "retained")
    pub = Conn(args, unique("pub"))
    pub.connect()
    pub.publish(t, "v1", qos=1, retain=True)
    pub.publish(t, "v2", qos=1, retain=True)
    early = Conn(args, unique("early"))
    early.connect()
    early.subscribe(t, 1)
    on_subscribe = early.collect(1) + early.quiet(0.3)
    pub.publish(t, "v3", qos=1, retain=True)
    live = early.collect(1)
    late = Conn(args, unique("late"))
    late.connect()
    late.subscribe(t, 1)
    late_got = late.collect(1) + late.quiet(0.3)
    pub.publish(t, b"", qos=1, retain=True)
    live_delete = early.collect(1)
    after = Conn(args, unique("after-delete"))
    after.connect()
    after.subscribe(t, 1)
    after_delete = after.quiet(1.0)
    for c in (pub, early, late, after):
        c.disconnect()
    return {
        "on_subscribe": on_subscribe,
        "live": live,
        "late_subscriber": late_got,
        "live_delete": live_delete,
        "after_delete": after_delete,
    }


def scenario_will(args):
    """No will on a clean DISCONNECT; the will on an abrupt close; a retained will."""
    t = topic(args, "will")
    retained_topic = t + "/retained"
    obs = Conn(args, unique("observer"))
    obs.connect()
    obs.subscribe(t, 1)

    clean = Conn(args, unique("will-clean"))
    clean.will_set(t, "will-after-clean-disconnect", qos=1)
    clean.connect()
    clean.disconnect()
    after_clean = obs.quiet(1.0)

    abrupt = Conn(args, unique("will-abrupt"))
    abrupt.will_set(t, "will-after-abrupt-close", qos=1)
    abrupt.connect()
    abrupt.drop()
    after_abrupt = obs.collect(1, args.wait)

    keeper = Conn(args, unique("will-retained"))
    keeper.will_set(retained_topic, "retained-will", qos=1, retain=True)
    keeper.connect()
    keeper.drop()
    time.sleep(0.3)
    late = Conn(args, unique("late"))
    late.connect()
    late.subscribe(retained_topic, 1)
    retained = late.collect(1)
    obs.disconnect()
    late.disconnect()
    return {"after_clean_disconnect": after_clean, "after_abrupt_close": after_abrupt, "retained_will": retained}


def scenario_will_delay(args):
    """MQTT 5 Will Delay Interval: sent after the delay; not sent if the client comes back."""
    t = topic(args, "will-delay")
    obs = Conn(args, unique("observer"))
    obs.connect()
    obs.subscribe(t, 1)

    delayed = Conn(args, unique("will-delayed"))
    delayed.will_set(t, "delayed-will", qos=1, properties=v5_props(PacketTypes.WILLMESSAGE, WillDelayInterval=2))
    delayed.connect(session_expiry=30)
    delayed.drop()
    dropped_at = time.monotonic()
    got = obs.collect(1, 6.0)
    delay = (got[0]["at"] - dropped_at) if got else None

    back_id = unique("will-back")
    back = Conn(args, back_id)
    back.will_set(t, "will-of-returning-client", qos=1,
                  properties=v5_props(PacketTypes.WILLMESSAGE, WillDelayInterval=2))
    back.connect(session_expiry=30)
    back.drop()
    time.sleep(0.3)
    again = Conn(args, back_id)
    resumed = again.connect(clean_start=False, session_expiry=30)
    returned = obs.quiet(2.7)
    again.disconnect()
    obs.disconnect()
    return {"delayed": got, "delay_seconds": delay, "resumed_connack": resumed, "after_return": returned}


def scenario_will_session_end(args):
    """MQTT 5: a Will Delay longer than the Session Expiry: the will goes out when the session
    ends."""
    t = topic(args, "will-session-end")
    obs = Conn(args, unique("observer"), version=5)
    obs.connect()
    obs.subscribe(t, 1)
    c = Conn(args, unique("short-lived"), version=5)
    c.will_set(t, "will-at-session-end", qos=1, properties=v5_props(PacketTypes.WILLMESSAGE, WillDelayInterval=30))
    c.connect(session_expiry=1)
    c.drop()
    dropped_at = time.monotonic()
    got = obs.collect(1, 6.0)
    obs.disconnect()
    return {"received": got, "delay_seconds": (got[0]["at"] - dropped_at) if got else None}


def scenario_will_takeover(args):
    """A connection taken over by a new one with the same client id did not DISCONNECT, so its
    will (no delay) is published."""
    t = topic(args, "will-takeover")
    obs = Conn(args, unique("observer"))
    obs.connect()
    obs.subscribe(t, 1)
    cid = unique("twin")
    first = Conn(args, cid)
    first.will_set(t, "will-of-the-replaced-connection", qos=1)
    first.connect()
    second = Conn(args, cid)
    second.connect()
    got = obs.collect(1, 3.0)
    first_closed = first.disconnected.wait(args.wait)
    second.disconnect()
    obs.disconnect()
    return {"received": got, "first_closed": first_closed}


def scenario_session_resume(args):
    """A persistent session (v5 Session Expiry / 3.1.1 clean session 0) queues QoS 1 and 2
    messages while offline and delivers them on resume; a clean start discards it."""
    t = topic(args, "session")
    sub_id = unique("persistent")
    s = Conn(args, sub_id, clean_session=False)
    first = s.connect(clean_start=True, session_expiry=120)
    s.subscribe(t, 2)
    s.disconnect()

    pub = Conn(args, unique("pub"))
    pub.connect()
    sent = []
    for i in range(args.count):
        qos = 1 + i % 2
        pub.publish(t, f"q{i}", qos=qos)
        sent.append({"payload": f"q{i}", "qos": qos})

    s2 = Conn(args, sub_id, clean_session=False)
    resumed = s2.connect(clean_start=False, session_expiry=120)
    got = s2.collect(args.count)
    extra = s2.quiet(0.5)
    s2.disconnect()

    pub.publish(t, "after-resume", qos=1)
    s3 = Conn(args, sub_id, clean_session=True)
    fresh = s3.connect(clean_start=True, session_expiry=0)
    after_clean = s3.quiet(1.0)
    s3.disconnect()
    pub.disconnect()
    return {
        "first_connack": first,
        "sent": sent,
        "resumed_connack": resumed,
        "received": got,
        "extra": extra,
        "clean_connack": fresh,
        "after_clean_start": after_clean,
    }


def scenario_session_expiry(args):
    """MQTT 5: a session ends Session Expiry Interval seconds after the disconnect, taking its
    queued messages with it; a request above the server's cap is answered with the cap."""
    t = topic(args, "expiry-session")
    sub_id = unique("short-session")
    s = Conn(args, sub_id, version=5)
    s.connect(clean_start=True, session_expiry=2)
    s.subscribe(t, 1)
    s.disconnect()
    pub = Conn(args, unique("pub"), version=5)
    pub.connect()
    pub.publish(t, "queued-for-an-expiring-session", qos=1)
    pub.disconnect()
    time.sleep(3.5)
    s2 = Conn(args, sub_id, version=5)
    after = s2.connect(clean_start=False, session_expiry=100000)
    delivered = s2.quiet(1.0)
    s2.disconnect()
    return {"connack_after_expiry": after, "delivered_after_expiry": delivered}


def scenario_takeover(args):
    """A second CONNECT with the same client id takes the session over."""
    t = topic(args, "takeover")
    cid = unique("twin")
    first = Conn(args, cid, clean_session=False)
    first.connect(clean_start=True, session_expiry=60)
    first.subscribe(t, 1)
    second = Conn(args, cid, clean_session=False)
    connack = second.connect(clean_start=False, session_expiry=60)
    first_closed = first.disconnected.wait(args.wait)
    pub = Conn(args, unique("pub"))
    pub.connect()
    pub.publish(t, "to-the-new-connection", qos=1)
    got_second = second.collect(1)
    got_first = first.quiet(0.3)
    pub.disconnect()
    second.disconnect()
    return {
        "second_connack": connack,
        "first_closed": first_closed,
        "first_disconnect_reason": first.disconnect_reason,
        "second_received": got_second,
        "first_received": got_first,
    }


def scenario_shared(args):
    """Two members of `$share/<group>/<topic>` split the messages; a plain subscriber gets all."""
    t = topic(args, "shared")
    group = unique("group").replace("-", "")
    members = []
    for name in ("member-a", "member-b"):
        m = Conn(args, unique(name))
        m.connect()
        m.subscribe(f"$share/{group}/{t}", 1)
        members.append(m)
    plain = Conn(args, unique("plain"))
    plain.connect()
    plain.subscribe(t, 1)
    pub = Conn(args, unique("pub"))
    pub.connect()
    for i in range(args.count):
        pub.publish(t, f"s{i}", qos=1)
    everything = plain.collect(args.count)
    deadline = time.monotonic() + args.wait
    got = [[], []]
    while sum(len(g) for g in got) < args.count and time.monotonic() < deadline:
        for m, g in zip(members, got):
            g.extend(m.collect(1, 0.05))
    time.sleep(0.3)
    for m, g in zip(members, got):
        g.extend(m.quiet(0.01))
    # When one member leaves, the group's messages all go to the one that stays.
    members[1].disconnect()
    for i in range(5):
        pub.publish(t, f"after-leave-{i}", qos=1)
    after_leave = members[0].collect(5)
    for c in [members[0], plain, pub]:
        c.disconnect()
    return {"member_a": got[0], "member_b": got[1], "plain": everything, "after_leave": after_leave}


def scenario_v5_properties(args):
    """Publish properties reach an MQTT 5 subscriber unchanged."""
    t = topic(args, "props")
    sub = Conn(args, unique("sub"), version=5)
    sub.connect()
    sub.subscribe(t, 1)
    pub = Conn(args, unique("pub"), version=5)
    pub.connect()
    sent = [["zeta", "1"], ["alpha", "2"], ["zeta", "3"], ["mid", "ünïcode"]]
    props = v5_props(
        PacketTypes.PUBLISH,
        UserProperty=[tuple(p) for p in sent],
        ResponseTopic=t + "/reply",
        CorrelationData=b"\x00\x01corr\xff",
        ContentType="application/json",
        PayloadFormatIndicator=1,
        MessageExpiryInterval=300,
    )
    pub.publish(t, '{"hello": 1}', qos=1, properties=props)
    got = sub.collect(1)
    pub.disconnect()
    sub.disconnect()
    return {"sent_user_properties": sent, "received": got}


def scenario_v5_request_response(args):
    """Request/response: the responder answers on the Response Topic with the Correlation Data."""
    t = topic(args, "request")
    reply_topic = t + "/reply/" + uuid.uuid4().hex[:6]
    responder = Conn(args, unique("responder"), version=5)
    responder.connect()
    responder.subscribe(t, 1)
    requester = Conn(args, unique("requester"), version=5)
    requester.connect()
    requester.subscribe(reply_topic, 1)
    requester.publish(t, "what time is it", qos=1,
                      properties=v5_props(PacketTypes.PUBLISH, ResponseTopic=reply_topic,
                                          CorrelationData=b"req-42"))
    requests = responder.collect(1)
    if not requests:
        raise ScenarioError("the responder received no request")
    req_props = requests[0].get("properties", {})
    if "ResponseTopic" not in req_props:
        return {"request": requests[0], "reply": []}
    responder.publish(req_props["ResponseTopic"], "noon", qos=1,
                      properties=v5_props(PacketTypes.PUBLISH,
                                          CorrelationData=bytes.fromhex(req_props.get("CorrelationData", ""))))
    reply = requester.collect(1)
    responder.disconnect()
    requester.disconnect()
    return {"request": requests[0], "reply": reply, "reply_topic": reply_topic}


def scenario_v5_topic_alias(args):
    """The client sets a topic alias, then publishes with the alias and an empty topic."""
    t = topic(args, "alias")
    sub = Conn(args, unique("sub"), version=5)
    sub.connect()
    sub.subscribe(t, 1)
    pub = Conn(args, unique("pub"), version=5)
    connack = pub.connect()
    pub.publish(t, "alias-set", qos=1, properties=v5_props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", "alias-used-1", qos=1, properties=v5_props(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", "alias-used-2", qos=0, properties=v5_props(PacketTypes.PUBLISH, TopicAlias=1))
    got = sub.collect(3)
    still_connected = not pub.disconnected.is_set()
    pub.disconnect()
    sub.disconnect()
    return {"connack": connack, "received": got, "publisher_still_connected": still_connected}


def scenario_v5_message_expiry(args):
    """Queued messages whose Message Expiry passed are not delivered; the others carry the
    remaining lifetime."""
    t = topic(args, "expiry")
    sub_id = unique("expiring")
    s = Conn(args, sub_id, version=5)
    s.connect(clean_start=True, session_expiry=60)
    s.subscribe(t, 1)
    s.disconnect()
    pub = Conn(args, unique("pub"), version=5)
    pub.connect()
    pub.publish(t, "short-lived", qos=1, properties=v5_props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    pub.publish(t, "long-lived", qos=1, properties=v5_props(PacketTypes.PUBLISH, MessageExpiryInterval=60))
    pub.disconnect()
    time.sleep(2.2)
    s2 = Conn(args, sub_id, version=5)
    connack = s2.connect(clean_start=False, session_expiry=60)
    got = s2.collect(2, 1.5)
    s2.disconnect()
    return {"connack": connack, "received": got}


def scenario_cross_version(args):
    """MQTT 5 publisher to an MQTT 3.1.1 subscriber and back."""
    t = topic(args, "cross")
    v3 = Conn(args, unique("v311"), version=311)
    v3.connect()
    v3.subscribe(t + "/to311", 1)
    v5 = Conn(args, unique("v5"), version=5)
    v5.connect()
    v5.subscribe(t + "/to5", 1)
    v5.publish(t + "/to311", "from-v5", qos=1,
               properties=v5_props(PacketTypes.PUBLISH, UserProperty=[("k", "v")], ContentType="text/plain"))
    v3.publish(t + "/to5", "from-v311", qos=1)
    to311 = v3.collect(1)
    to5 = v5.collect(1)
    v3.disconnect()
    v5.disconnect()
    return {"to_v311": to311, "to_v5": to5}


def scenario_bridge(args):
    """A client on the alternative transport (--mode, --port) and one on MQTT over TLS
    (--tcp-port) exchange messages both ways."""
    t = topic(args, "bridge")
    alt = Conn(args, unique(args.mode))
    connack = alt.connect()
    selected_alpn = None
    sock = alt.c.socket()
    raw = getattr(sock, "_socket", sock)
    if hasattr(raw, "selected_alpn_protocol"):
        selected_alpn = raw.selected_alpn_protocol()
    alt.subscribe(t + "/to-alt", args.qos)
    tcp = Conn(args, unique("tcp"), mode="tcp", port=args.tcp_port)
    tcp.connect()
    tcp.subscribe(t + "/to-tcp", args.qos)
    for i in range(args.count):
        alt.publish(t + "/to-tcp", f"from-alt-{i}", qos=args.qos)
        tcp.publish(t + "/to-alt", f"from-tcp-{i}", qos=args.qos)
    to_tcp = tcp.collect(args.count)
    to_alt = alt.collect(args.count)
    alt.disconnect()
    tcp.disconnect()
    return {"connack": connack, "selected_alpn": selected_alpn, "to_tcp": to_tcp, "to_alt": to_alt}


def digest_only(messages):
    return [{"topic": m["topic"], "len": m["len"], "sha256": m["sha256"], "qos": m["qos"]} for m in messages]


def scenario_big_payload(args):
    """One large message each way between a client on --mode/--port and one on --tcp-port."""
    t = topic(args, "big")
    body = bytes((i * 7 + 3) % 256 for i in range(args.payload_size))
    alt = Conn(args, unique(args.mode))
    alt.connect()
    alt.subscribe(t + "/to-alt", 1)
    tcp = Conn(args, unique("tcp"), mode="tcp", port=args.tcp_port)
    tcp.connect()
    tcp.subscribe(t + "/to-tcp", 1)
    alt.publish(t + "/to-tcp", body, qos=1)
    tcp.publish(t + "/to-alt", body, qos=1)
    to_tcp = tcp.collect(1)
    to_alt = alt.collect(1)
    alt.disconnect()
    tcp.disconnect()
    return {"sent": {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()},
            "to_tcp": digest_only(to_tcp), "to_alt": digest_only(to_alt)}


def try_connect(args, **conn_kwargs):
    c = Conn(args, unique("probe"), **conn_kwargs)
    try:
        c.start()
    except Exception as error:  # noqa: BLE001 - the observation
        return {"connected": False, "stage": "tls/transport", "error": f"{type(error).__name__}: {error}"}
    c._wait(lambda: c.connack is not None or c.connect_failed or c.disconnected.is_set(), args.wait)
    connack = c.connack
    if connack is not None and connack["reason_code"] == 0:
        c.disconnect()
        return {"connected": True, "connack": connack}
    c.c.loop_stop()
    return {"connected": False, "stage": "mqtt", "connack": connack,
            "disconnect_reason": c.disconnect_reason}


def scenario_refused(args):
    """First a control connection with the device certificate (must succeed), then the same
    connection without a client certificate (or with --bad-cert/--bad-key)."""
    control = try_connect(args)
    if args.bad_cert:
        probe = try_connect(args, cert=args.bad_cert, key=args.bad_key)
    else:
        probe = try_connect(args, client_cert=False)
    return {"control": control, "probe": probe}


def http_upgrade(args, path, subprotocol):
    """One WebSocket upgrade request over TLS with the client certificate (no paho)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    with socket.create_connection((args.host, args.port), timeout=args.wait) as raw:
        with context.wrap_socket(raw, server_hostname=args.host) as tls:
            request = (f"GET {path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n")
            tls.sendall(request.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    status = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return {"status": int(status[1]) if len(status) > 1 and status[1].isdigit() else None,
            "status_line": lines[0], "headers": headers}


def scenario_ws_upgrade(args):
    """The raw HTTP upgrade: `GET /mqtt` with subprotocol `mqtt`."""
    return {"mqtt": http_upgrade(args, args.ws_path, "mqtt")}


SCENARIOS = {
    "pubsub": scenario_pubsub,
    "subscribe": scenario_subscribe,
    "publish": scenario_publish,
    "persist-subscribe": scenario_persist_subscribe,
    "persist-receive": scenario_persist_receive,
    "persist-receive-unacked": scenario_persist_receive_unacked,
    "unacked-redelivery": scenario_unacked_redelivery,
    "retain-get": scenario_retain_get,
    "retained": scenario_retained,
    "will": scenario_will,
    "will-delay": scenario_will_delay,
    "will-session-end": scenario_will_session_end,
    "will-takeover": scenario_will_takeover,
    "session-resume": scenario_session_resume,
    "takeover": scenario_takeover,
    "session-expiry": scenario_session_expiry,
    "shared": scenario_shared,
    "v5-properties": scenario_v5_properties,
    "v5-request-response": scenario_v5_request_response,
    "v5-topic-alias": scenario_v5_topic_alias,
    "v5-message-expiry": scenario_v5_message_expiry,
    "cross-version": scenario_cross_version,
    "bridge": scenario_bridge,
    "big-payload": scenario_big_payload,
    "refused": scenario_refused,
    "ws-upgrade": scenario_ws_upgrade,
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="port of the transport chosen by --mode")
    p.add_argument("--ca", required=True, help="root-ca.pem")
    p.add_argument("--cert", required=True, help="certificate.pem.crt")
    p.add_argument("--key", required=True, help="private.pem.key")
    p.add_argument("--version", type=int, choices=(311, 5), default=5, help="311 = MQTT 3.1.1, 5 = MQTT 5")
    p.add_argument("--mode", choices=("tcp", "websockets", "alpn"), default="tcp",
                   help="MQTT over TLS, MQTT over WebSocket (TLS), or MQTT over TLS with ALPN")
    p.add_argument("--ws-path", default="/mqtt")
    p.add_argument("--alpn", default="x-amzn-mqtt-ca")
    p.add_argument("--tcp-port", type=int, help="MQTT over TLS port (bridge)")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    p.add_argument("--sub-qos", type=int, choices=(0, 1, 2), help="subscription QoS (pubsub; default --qos)")
    p.add_argument("--payload-size", type=int, default=100_000, help="bytes (big-payload)")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--topic")
    p.add_argument("--client-id")
    p.add_argument("--prefix", default="m")
    p.add_argument("--payload")
    p.add_argument("--retain", action="store_true")
    p.add_argument("--user-property", action="append", default=[], help="k=v (MQTT 5 publish)")
    p.add_argument("--session-expiry", type=int, default=600)
    p.add_argument("--bad-cert")
    p.add_argument("--bad-key")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for each expected packet")
    p.add_argument("--timeout", type=int, default=25, help="the whole run, seconds")
    args = p.parse_args(argv)
    if args.scenario in ("bridge", "big-payload") and not args.tcp_port:
        p.error(f"{args.scenario} needs --tcp-port")
    return args


def main(argv):
    args = parse_args(argv)

    def on_alarm(signum, frame):
        sys.stderr.write(f"paho scenario {args.scenario!r} did not finish within {args.timeout} s\n")
        sys.stderr.flush()
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout)
    try:
        result = SCENARIOS[args.scenario](args)
    except ScenarioError as error:
        sys.stderr.write(f"paho scenario {args.scenario!r} failed: {error}\n")
        sys.stderr.flush()
        os._exit(2)
    emit({"result": result})
    sys.stdout.flush()
    # paho's network threads are daemons; leave without waiting for them.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
