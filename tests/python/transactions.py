"""Transactional input written by a client nobody here wrote: Python
confluent-kafka (librdkafka) writes to one partition of TOPIC, interleaved,
plain records, transactions it commits and transactions it aborts, and
ends with a transaction marker (the last offset of the log is a control
record). Prints one JSON line: the `n` of every record a read_committed
reader must see, and of every record it must not.

Usage: transactions.py BOOTSTRAP TOPIC
"""

import json
import sys

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP, TOPIC = sys.argv[1], sys.argv[2]

admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])[TOPIC].result()

plain = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": False})
txn = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": "transactions-test"})
txn.init_transactions()

visible, hidden, n = [], [], 0


def value(kind):
    return json.dumps({"n": n, "kind": kind}).encode()


for round_ in range(30):
    committed = round_ % 3 != 1
    txn.begin_transaction()
    for _ in range(20):
        txn.produce(TOPIC, value("committed" if committed else "aborted"), partition=0)
        (visible if committed else hidden).append(n)
        n += 1
    txn.flush()
    # Plain records between a transaction's records and its marker.
    for _ in range(5):
        plain.produce(TOPIC, value("plain"), partition=0)
        visible.append(n)
        n += 1
    plain.flush()
    if committed:
        txn.commit_transaction()
    else:
        txn.abort_transaction()

print(json.dumps({"visible": visible, "hidden": hidden}))
