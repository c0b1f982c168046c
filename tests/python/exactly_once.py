"""Exactly-once, checked by a client nobody here wrote: Python
confluent-kafka (librdkafka) reads the input, and the output and dead-letter
topics with isolation.level=read_committed, and matches every outcome to its
input by the pipeline.source.* headers. Prints one JSON line: the number of
inputs, outcomes, inputs with no outcome and outcomes beyond the first.

Usage: exactly_once.py BOOTSTRAP INPUT OUTPUT [OUTPUT...]
"""

import json
import sys
from collections import Counter

from confluent_kafka import Consumer, TopicPartition

BOOTSTRAP, INPUT, OUTPUTS = sys.argv[1], sys.argv[2], sys.argv[3:]


def read(topic, on_record):
    """Reads `topic` from the start to its last stable offset."""
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": "exactly-once-check",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {}
    for p in partitions:
        # With read_committed the high watermark is the last stable offset.
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > 0:
            ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    done = set()
    idle = 0
    while len(done) < len(ends) and idle < 30:
        m = consumer.poll(1.0)
        if m is None:
            idle += 1
            # A partition whose last records are markers or aborted ones
            # has nothing more to give.
            for p, end in ends.items():
                position = consumer.position([TopicPartition(topic, p)])[0].offset
                if position >= end:
                    done.add(p)
            continue
        idle = 0
        if m.error():
            raise RuntimeError(m.error())
        on_record(m)
        if m.offset() + 1 >= ends[m.partition()]:
            done.add(m.partition())
    consumer.close()


inputs = set()
read(INPUT, lambda m: inputs.add((m.partition(), m.offset())))

seen = Counter()


def outcome(m):
    headers = {k: v for k, v in (m.headers() or [])}
    seen[(int(headers["pipeline.source.partition"]), int(headers["pipeline.source.offset"]))] += 1


for topic in OUTPUTS:
    read(topic, outcome)

print(
    json.dumps(
        {
            "inputs": len(inputs),
            "outcomes": sum(seen.values()),
            "missing": len(inputs - set(seen)),
            "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        }
    )
)
