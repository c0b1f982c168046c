"""The seed's consumer, faithfully, for the benchmark baselines.

The seed (`real-time-streaming-pipeline.md`) is a Python consumer that reads
`user-login`, keeps android events, adds `processed_timestamp` and a readable
login time, categorises the device, flags suspicious locales, counts events
per `app_version` (logged every 60 s), and produces the result to
`processed-user-login`, one message at a time. This file is that logic on
either client:

    python seed_consumer.py --client kafka-python ...   # the seed's own library
    python seed_consumer.py --client confluent ...      # the same on librdkafka

It consumes from the earliest offset with a fresh group until it has read
`--count` events or `--seconds` have passed since the first message
(whichever is first; the group join before it is not timed), then flushes
the producer and prints one JSON line: events read, seconds, rate.
"""

import argparse
import json
import time
from collections import Counter
from datetime import datetime, timezone

SUSPICIOUS_LOCALES = {"RU", "CN", "KP", "IR", "NG", "BY"}
CATEGORIES = {
    "android": "Mobile",
    "ios": "Mobile",
    "ipad": "Tablet",
    "tablet": "Tablet",
    "windows": "Desktop",
    "macos": "Desktop",
    "linux": "Desktop",
}


class Processor:
    """The seed's per-message processing and its 60 s app-version counts."""

    def __init__(self):
        self.counts = Counter()
        self.last_report = time.time()

    def process(self, raw):
        """Returns the processed message as bytes, or None when it is
        filtered out or cannot be decoded (the seed logs and skips those)."""
        try:
            event = json.loads(raw)
        except (ValueError, TypeError):
            return None
        if not isinstance(event, dict) or event.get("device_type") != "android":
            return None
        try:
            event["processed_timestamp"] = int(time.time())
            event["login_time"] = datetime.fromtimestamp(
                int(event["timestamp"]), tz=timezone.utc
            ).strftime("%Y-%m-%d %H:%M:%S")
            event["device_category"] = CATEGORIES.get(
                str(event.get("device_type", "")).lower(), "Unknown"
            )
            event["anomaly"] = str(event.get("locale", "")).upper() in SUSPICIOUS_LOCALES
            self.counts[event.get("app_version", "unknown")] += 1
        except (KeyError, ValueError, TypeError):
            return None
        now = time.time()
        if now - self.last_report >= 60:
            print(json.dumps({"app_version_counts": dict(self.counts)}), flush=True)
            self.counts.clear()
            self.last_report = now
        return json.dumps(event).encode()


def run_kafka_python(args, processor):
    from kafka import KafkaConsumer, KafkaProducer

    consumer = KafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap)
    read, started = 0, None
    while read < args.count and (started is None or time.time() < started + args.seconds):
        for messages in consumer.poll(timeout_ms=500).values():
            for message in messages:
                if started is None:
                    started = time.time()
                read += 1
                out = processor.process(message.value)
                if out is not None:
                    producer.send(args.output, out)
    producer.flush()
    consumer.close()
    return read, time.time() - started


def run_confluent(args, processor):
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.input])
    producer = Producer({"bootstrap.servers": args.bootstrap})
    read, started = 0, None
    while read < args.count and (started is None or time.time() < started + args.seconds):
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        if started is None:
            started = time.time()
        read += 1
        out = processor.process(message.value())
        if out is not None:
            while True:
                try:
                    producer.produce(args.output, out)
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.poll(0)
    producer.flush()
    consumer.close()
    return read, time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=["kafka-python", "confluent"], required=True)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--input", default="user-login")
    parser.add_argument("--output", default="processed-user-login")
    parser.add_argument("--group", default="seed-consumer")
    parser.add_argument("--count", type=int, default=10**12)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    run = run_kafka_python if args.client == "kafka-python" else run_confluent
    read, seconds = run(args, Processor())
    print(json.dumps({"client": args.client, "events": read, "seconds": round(seconds, 2),
                      "per_sec": round(read / seconds)}), flush=True)


if __name__ == "__main__":
    main()
