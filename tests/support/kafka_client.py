"""The tests' independent Kafka client (confluent-kafka, not defectflow's librdkafka
binding): creates topics and dumps a topic as JSON.

usage: kafka_client.py create BOOTSTRAP NAME:PARTITIONS...
       kafka_client.py dump BOOTSTRAP TOPIC      -> [{partition, offset, key, value, headers, timestamp}]
       kafka_client.py dump-outputs BOOTSTRAP TOPIC...  -> {topic: {"committed": [...], "raw": [...]}}: each
                                                    topic as dump gives it, and as a read_committed consumer sees it
       kafka_client.py count BOOTSTRAP TOPIC     -> number of messages
       kafka_client.py produce BOOTSTRAP TOPIC   <- JSON lines {"value": text} or {"bytes": n},
                                                    optionally with "partition": n
"""

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, specs):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = []
    for spec in specs:
        name, partitions = spec.split(":")
        topics.append(NewTopic(name, num_partitions=int(partitions), replication_factor=1))
    deadline = time.monotonic() + 30
    while True:
        try:
            for future in admin.create_topics(topics, request_timeout=10).values():
                future.result(timeout=10)
            return
        except KafkaException as error:
            if time.monotonic() > deadline:
                raise SystemExit(f"cannot create topics: {error}")
            time.sleep(0.2)


def messages(bootstrap, topic, isolation="read_uncommitted"):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "defectflow-tests",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        # Read to the end of each partition rather than to its high watermark, which
        # tansu reports behind the last record of a batch.
        "enable.partition.eof": True,
        # By default the raw topic, aborted transactions included: exactly-once is
        # checked on it.
        "isolation.level": isolation,
    })
    metadata = consumer.list_topics(topic, timeout=10)
    if metadata.topics[topic].error is not None:
        raise SystemExit(f"{topic}: {metadata.topics[topic].error}")
    out = []
    for partition in sorted(metadata.topics[topic].partitions):
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + 30
        while True:
            message = consumer.poll(1.0)
            if message is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out reading {topic}/{partition}")
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    break
                raise SystemExit(f"{topic}/{partition}: {message.error()}")
            out.append({
                "partition": partition,
                "offset": message.offset(),
                "key": message.key().decode() if message.key() is not None else None,
                "value": message.value().decode() if message.value() is not None else None,
                "headers": {k: (v.decode() if v is not None else None) for k, v in (message.headers() or [])},
                "timestamp": message.timestamp()[1],
            })
    consumer.close()
    return out


def produce(bootstrap, topic):
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4_000_000})
    for line in sys.stdin:
        spec = json.loads(line)
        # {"value": null} with a key is a tombstone.
        value = b"x" * spec["bytes"] if "bytes" in spec else spec["value"] and spec["value"].encode()
        key = spec["key"].encode() if spec.get("key") is not None else None
        if "partition" in spec:
            producer.produce(topic, value=value, key=key, partition=spec["partition"])
        else:
            producer.produce(topic, value=value, key=key)
    if producer.flush(30) != 0:
        raise SystemExit(f"not all messages reached {topic}")


def main():
    command, bootstrap, *rest = sys.argv[1:]
    if command == "create":
        create(bootstrap, rest)
    elif command == "dump":
        print(json.dumps(messages(bootstrap, rest[0])))
    elif command == "dump-outputs":
        print(json.dumps({
            topic: {"committed": messages(bootstrap, topic, "read_committed"), "raw": messages(bootstrap, topic)}
            for topic in rest
        }))
    elif command == "produce":
        produce(bootstrap, rest[0])
    elif command == "count":
        print(len(messages(bootstrap, rest[0])))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
