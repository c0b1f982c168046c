"""Schema-registry formats through a client nobody here wrote: Python
confluent-kafka's serializers produce the input, its deserializers read the
output back.

Usage:
  formats.py produce BOOTSTRAP REGISTRY TOPIC COUNT SEED --schema FILE
             [--then-schema FILE --switch-at K] [--key-schema FILE] [--rate N]
             [--format avro|protobuf|json-schema]
      Seed-format login events, serialized by confluent-kafka's
      AvroSerializer (the default), ProtobufSerializer (message
      pipeline.test.UserLogin, the second of its file, built here from a
      descriptor: --schema is not read) or JSONSerializer (--schema a JSON
      Schema); subject <topic>-value, as TopicNameStrategy; Avro keys with
      --key-schema as <topic>-key. With --then-schema, events from index K
      on use that schema (a producer moving to version 2 mid-stream; its new
      fields get values). Prints {"produced": N, "android": A}: A events
      have device_type "android" in any case, what the default chain's
      filter keeps.
  formats.py consume BOOTSTRAP REGISTRY TOPIC EXPECT [--keys] [--format avro|json-schema]
      Reads TOPIC from its start (read_committed) with AvroDeserializer or
      JSONDeserializer until EXPECT records or 20 s without one; prints
      {"count": N, "values": [...], "keys": [...], "schema_ids": [...]}.
"""

import argparse
import json
import random
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

FIELDS = ["user_id", "app_version", "device_type", "ip", "locale", "device_id", "timestamp"]
STRATEGY = {"subject.name.strategy": topic_subject_name_strategy}
# Without a timeout the client waits forever for a response: once, Apicurio
# 3.3.3 took a request on a kept-alive connection (after answering 404 to
# the client's association lookup) and never answered or logged it, and
# the test hung. With one, the client retries on a new connection. A CI
# run then read 1 of 1,399 records: the look-up's wait counted as idle
# time, which ended the read (fixed in `consume`).
REGISTRY_TIMEOUT_S = 10


def login_message_class():
    """pipeline.test.UserLogin, the second message of its file (after
    Header), so its message indexes are [1], not the first message's [0]."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="login.proto", package="pipeline.test", syntax="proto3")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    header = f.message_type.add(name="Header")
    header.field.add(name="source", number=1, type=string, label=optional)
    login = f.message_type.add(name="UserLogin")
    for i, name in enumerate(FIELDS):
        login.field.add(name=name, number=i + 1, type=string, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pipeline.test.UserLogin"))


def event(rng, i):
    return {
        "user_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "app_version": rng.choice(["2.3.0", "2.4.0", "2.5.1"]),
        "device_type": rng.choice(["android", "Android", "iOS"]),
        "ip": ".".join(str(rng.randint(1, 254)) for _ in range(4)),
        "locale": rng.choice(["RU", "US", "DE", "IR", "BR"]),
        "device_id": f"{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        "timestamp": str(1694479551 + i),
    }


def serializer(registry, schema_file, fmt="avro"):
    # Apicurio does not serve Confluent's association API the default
    # strategy asks first: name subjects by topic, as the registry expects.
    if fmt == "protobuf":
        cls = login_message_class()
        ser = ProtobufSerializer(cls, registry, conf={**STRATEGY, "use.deprecated.format": False})

        def protobuf(event, ctx):
            return ser(cls(**{k: v for k, v in event.items() if k in FIELDS}), ctx)

        return protobuf
    with open(schema_file) as f:
        text = f.read()
    if fmt == "json-schema":
        return JSONSerializer(text, registry, conf=STRATEGY)
    return AvroSerializer(registry, text, conf=STRATEGY)


def produce(args):
    registry = SchemaRegistryClient({"url": args.registry, "timeout": REGISTRY_TIMEOUT_S})
    first = serializer(registry, args.schema, args.format)
    then = serializer(registry, args.then_schema, args.format) if args.then_schema else None
    keys = serializer(registry, args.key_schema) if args.key_schema else None
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    rng = random.Random(args.seed)
    android = 0
    started = time.monotonic()
    for i in range(args.count):
        e = event(rng, i)
        ser = first
        if then is not None and i >= args.switch_at:
            ser = then
            e["session_id"] = f"s-{i}"
        if e["device_type"].lower() == "android":
            android += 1
        value = ser(e, SerializationContext(args.topic, MessageField.VALUE))
        key = None
        if keys is not None:
            key = keys({"user_id": e["user_id"]}, SerializationContext(args.topic, MessageField.KEY))
        else:
            key = e["user_id"].encode()
        while True:
            try:
                producer.produce(args.topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if args.rate:
            ahead = (i + 1) / args.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    left = producer.flush(60)
    if left:
        sys.exit(f"{left} records not delivered")
    print(json.dumps({"produced": args.count, "android": android}))


def consume(args):
    registry = SchemaRegistryClient({"url": args.registry, "timeout": REGISTRY_TIMEOUT_S})
    if args.format == "json-schema":
        values = JSONDeserializer(None, schema_registry_client=registry)
    else:
        values = AvroDeserializer(registry)
    keys = AvroDeserializer(registry) if args.keys else None
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"formats-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    consumer.subscribe([args.topic])
    out = {"count": 0, "values": [], "keys": [], "schema_ids": []}
    idle = time.monotonic()
    while out["count"] < args.expect and time.monotonic() - idle < 20:
        m = consumer.poll(0.5)
        if m is None or m.error():
            continue
        raw = m.value()
        ctx = SerializationContext(args.topic, MessageField.VALUE)
        out["values"].append(values(raw, ctx))
        out["schema_ids"].append(int.from_bytes(raw[1:5], "big"))
        if keys is not None:
            out["keys"].append(keys(m.key(), SerializationContext(args.topic, MessageField.KEY)))
        out["count"] += 1
        # Idle means no message: a slow registry look-up above (see
        # REGISTRY_TIMEOUT_S) is not idleness.
        idle = time.monotonic()
    consumer.close()
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("produce")
    for a in ["bootstrap", "registry", "topic"]:
        pr.add_argument(a)
    pr.add_argument("count", type=int)
    pr.add_argument("seed", type=int)
    pr.add_argument("--schema", required=True)
    pr.add_argument("--then-schema")
    pr.add_argument("--switch-at", type=int, default=0)
    pr.add_argument("--key-schema")
    pr.add_argument("--rate", type=float, default=0)
    pr.add_argument("--format", default="avro", choices=["avro", "protobuf", "json-schema"])
    co = sub.add_parser("consume")
    for a in ["bootstrap", "registry", "topic"]:
        co.add_argument(a)
    co.add_argument("expect", type=int)
    co.add_argument("--keys", action="store_true")
    co.add_argument("--format", default="avro", choices=["avro", "json-schema"])
    args = p.parse_args()
    produce(args) if args.cmd == "produce" else consume(args)


if __name__ == "__main__":
    main()
