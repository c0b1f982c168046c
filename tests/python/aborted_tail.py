"""An upstream transactional producer nobody here wrote (Python
confluent-kafka) writes COUNT records to partition 0 of TOPIC in one
transaction and aborts it, so the log ends with aborted records and their
abort marker. Prints one JSON line: how many records it aborted.

Usage: aborted_tail.py BOOTSTRAP TOPIC COUNT
"""

import json
import sys

from confluent_kafka import Producer

BOOTSTRAP, TOPIC, COUNT = sys.argv[1], sys.argv[2], int(sys.argv[3])

txn = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": "aborted-tail"})
txn.init_transactions()
txn.begin_transaction()
for n in range(COUNT):
    value = {"n": n, "app_version": "aborted", "timestamp": 970}
    txn.produce(TOPIC, json.dumps(value).encode(), partition=0)
txn.flush()
txn.abort_transaction()

print(json.dumps({"aborted": COUNT}))
