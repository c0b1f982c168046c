"""Checks that two output topics hold the same records, for the benchmark.

    python same_output.py --bootstrap HOST:PORT TOPIC_A TOPIC_B

Reads both topics from the start to their end offsets with confluent-kafka
(a client neither side wrote) and compares them as multisets of (key,
value), each value decoded as JSON with `processed_timestamp` removed (it
is the clock at processing time, so it differs between runs). Field order
and spacing do not count; every other field and value does. Prints one JSON
line with the counts and exits 1 if the topics differ, with a few examples
of records only one side has.
"""

import argparse
import json
import sys
from collections import Counter

from confluent_kafka import Consumer, TopicPartition


def read(bootstrap, topic):
    """Every record of `topic` as a Counter of (key, normalised value)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "same-output",
                         "enable.auto.commit": False})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {}
    for p in parts:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    records = Counter()
    while ends:
        for m in consumer.consume(10000, timeout=1.0):
            if m.error():
                raise SystemExit(f"{topic}: {m.error()}")
            value = json.loads(m.value())
            value.pop("processed_timestamp", None)
            key = m.key().decode("utf-8", "replace") if m.key() is not None else None
            records[(key, json.dumps(value, sort_keys=True))] += 1
            if m.offset() + 1 >= ends.get(m.partition(), 0):
                ends.pop(m.partition(), None)
    consumer.close()
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args()
    a, b = read(args.bootstrap, args.a), read(args.bootstrap, args.b)
    only_a, only_b = a - b, b - a
    print(json.dumps({args.a: sum(a.values()), args.b: sum(b.values()),
                      "only_" + args.a: sum(only_a.values()),
                      "only_" + args.b: sum(only_b.values())}))
    for side, diff in [(args.a, only_a), (args.b, only_b)]:
        for (key, value), _ in list(diff.items())[:3]:
            print(f"only in {side}: key={key} value={value}", file=sys.stderr)
    sys.exit(1 if only_a or only_b else 0)


if __name__ == "__main__":
    main()
