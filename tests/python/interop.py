"""Interop with a client nobody here wrote: Python confluent-kafka
(librdkafka) produces seed-format events, pipeline-host processes them, and
confluent-kafka reads the output and dead-letter topics back. The expected
results are computed here, in Python, from the events this script made.

Usage: interop.py BOOTSTRAP HOST_BIN PLUGINS_DIR
"""

import datetime
import json
import random
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP, HOST_BIN, PLUGINS = sys.argv[1], sys.argv[2], sys.argv[3]
N = 3000
SUSPICIOUS = {"RU", "CN", "KP", "IR", "NG", "BY"}
IN, OUT, DLQ = "py-user-login", "py-processed", "py-dead-letters"


def make_events(rng):
    """Seed-format events; some undecodable, some missing a field."""
    events = []
    for i in range(N):
        event = {
            "user_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "app_version": rng.choice(["2.3.0", "2.4.0"]),
            "device_type": rng.choice(["android", "Android", "iOS"]),
            "ip": ".".join(str(rng.randint(1, 254)) for _ in range(4)),
            "locale": rng.choice(["RU", "US", "DE", "ir", "BR"]),
            "device_id": f"{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
            "timestamp": str(1694479551 + i),
        }
        roll = rng.random()
        if roll < 0.02:
            value = b"\x00garbage" if rng.random() < 0.5 else b'{"user_id": "x", '
        else:
            if roll < 0.06:
                del event[rng.choice(["device_type", "timestamp", "locale", "ip"])]
            elif roll < 0.08:
                event["timestamp"] = int(event["timestamp"])
            value = json.dumps(event).encode()
        events.append((event["user_id"].encode(), value))
    return events


def headers_of(key):
    """An event's headers: a list in Kafka, where order matters and a name
    may repeat; `None` is a null value."""
    return [("trace", key[:8]), ("dup", b"first"), ("dup", b"second"), ("nullable", None), ("trace", b"again")]


def passed_headers(key):
    """The headers the output and dead letters must carry first, in order:
    the input's own, a null value arriving as an empty one (the stage batch
    holds bytes)."""
    return [(k, b"" if v is None else v) for k, v in headers_of(key)]


def expected(value):
    """Where one event should land: ('out', dict) | ('dlq', stage) | ('drop',)."""
    try:
        event = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return ("dlq", "host")
    if not isinstance(event, dict):
        return ("dlq", "host")
    device = event.get("device_type")
    if not isinstance(device, str):
        return ("dlq", "android_filter")
    if device.lower() != "android":
        return ("drop",)
    ts = event.get("timestamp")
    if isinstance(ts, str) and ts.isdigit():
        secs = int(ts)
    elif isinstance(ts, int) and not isinstance(ts, bool):
        secs = ts
    else:
        return ("dlq", "enrich")
    event["login_time"] = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    event["device_category"] = "Mobile"
    locale = event.get("locale")
    if isinstance(locale, str) and locale.upper() in SUSPICIOUS:
        event["anomaly"] = True
        event["anomaly_reasons"] = [f"suspicious locale {locale.upper()}"]
    elif isinstance(locale, str):
        event["anomaly"] = False
    else:
        event["anomaly"] = True
        event["anomaly_reasons"] = ["missing locale"]
    return ("out", event)


def consume_all(topic, want):
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": f"interop-{topic}-{time.time()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    records = []
    deadline = time.time() + 60
    while len(records) < want and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            raise RuntimeError(f"consume {topic}: {msg.error()}")
        records.append(msg)
    # Anything extra would show up shortly after.
    end = time.time() + 2
    while time.time() < end:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            records.append(msg)
    consumer.close()
    return records


def main():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for f in admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1) for t in (IN, OUT, DLQ)]).values():
        f.result(timeout=30)

    events = make_events(random.Random(2024))
    # A third each uncompressed, lz4 and zstd: the host must decode all three.
    for i, codec in enumerate(("none", "lz4", "zstd")):
        producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5, "compression.type": codec})
        for key, value in events[i::3]:
            producer.produce(IN, key=key, value=value, headers=headers_of(key))
        assert producer.flush(30) == 0, f"confluent-kafka could not deliver every event ({codec})"

    started = int(time.time())
    run = subprocess.run(
        [HOST_BIN, "--bootstrap", BOOTSTRAP, "--input", IN, "--output", OUT, "--dlq", DLQ, "--until-end"]
        + [a for s in ("android_filter", "enrich", "categorize", "anomaly") for a in ("--plugin", f"{PLUGINS}/{s}.wasm")],
        capture_output=True, text=True, timeout=120,
    )
    finished = int(time.time())
    assert run.returncode == 0, run.stderr

    want_out, want_dlq = {}, {}
    for key, value in events:
        kind = expected(value)
        if kind[0] == "out":
            want_out[key] = kind[1]
        elif kind[0] == "dlq":
            want_dlq[key] = (kind[1], value)
    assert len(want_out) > 500 and len(want_dlq) > 50, (len(want_out), len(want_dlq))

    out = consume_all(OUT, len(want_out))
    assert len(out) == len(want_out), f"output has {len(out)} records, expected {len(want_out)}"
    for msg in out:
        event = json.loads(msg.value())
        processed = event.pop("processed_timestamp")
        assert started - 1 <= processed <= finished + 1, processed
        want = want_out.pop(msg.key())
        assert event == want, f"{event} != {want}"
        headers = msg.headers()
        assert headers[:5] == passed_headers(msg.key()), headers
        assert [k for k, _ in headers[5:]] == ["pipeline.source.topic", "pipeline.source.partition", "pipeline.source.offset"], headers
    assert not want_out

    dlq = consume_all(DLQ, len(want_dlq))
    assert len(dlq) == len(want_dlq), f"dead letters: {len(dlq)}, expected {len(want_dlq)}"
    for msg in dlq:
        assert msg.headers()[:5] == passed_headers(msg.key()), msg.headers()
        headers = {k: v.decode() for k, v in msg.headers()}
        stage, value = want_dlq.pop(msg.key())
        assert headers["pipeline.error.stage"] == stage, (headers, stage)
        assert headers["pipeline.error.reason"]
        assert headers["pipeline.source.topic"] == IN
        assert msg.value() == value, "dead letter must keep the original bytes"
    assert not want_dlq
    print(f"interop ok: {N} events produced by confluent-kafka, {len(out)} outputs and {len(dlq)} dead letters checked")


if __name__ == "__main__":
    main()
