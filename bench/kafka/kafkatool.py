"""Kafka helpers for bench/run-kafka.sh, over confluent-kafka (librdkafka), in the venv the script
makes ($WEIR_HOME/venv-kafka-bench).

usage:
  kafkatool.py create BOOTSTRAP TOPIC PARTITIONS
  kafkatool.py count BOOTSTRAP TOPIC
      prints the number of messages in TOPIC (sum of the partitions' end offsets; the topics are
      written without transactions, so offsets are messages)
  kafkatool.py latency BOOTSTRAP IN OUT PHOTOS_DIR RATE SECONDS WARMUP
      sends WARMUP photos and waits for their labels on OUT, then sends photos at RATE per second
      for SECONDS, each keyed `<seq>:<send time ms>`, while a read_committed consumer of OUT takes
      the time each label arrives; prints `latency n=N p50_ms=.. p99_ms=.. mean_ms=.. max_ms=..
      missing=M` over the timed photos (a label seen twice would be counted once and reported as
      `duplicates=D`).
"""

import os
import statistics
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1)])
    for f in fs.values():
        f.result(30)
    # Wait until every partition has a leader, so that a client started next finds the topic.
    deadline = time.time() + 30
    while time.time() < deadline:
        t = admin.list_topics(topic, timeout=10).topics.get(topic)
        if t and t.error is None and len(t.partitions) == int(partitions) and all(
            p.leader >= 0 for p in t.partitions.values()
        ):
            return
        time.sleep(0.1)
    sys.exit(f"create: topic {topic} has no leader after 30 s")


def count(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "kafkatool-count"})
    md = c.list_topics(topic, timeout=10)
    total = 0
    for p in md.topics[topic].partitions:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        total += hi - lo
    c.close()
    print(total)


def photos(directory):
    names = sorted(
        n for n in os.listdir(directory) if n.lower().endswith((".jpg", ".png"))
    )
    out = []
    for n in names:
        with open(os.path.join(directory, n), "rb") as f:
            data = f.read()
        if len(data) < 2_000_000:
            out.append(data)
    return out


def percentile(xs, q):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def latency(bootstrap, inp, out, photo_dir, rate, seconds, warmup):
    rate, seconds, warmup = float(rate), float(seconds), int(warmup)
    images = photos(photo_dir)
    received = {}
    duplicates = [0]
    stop = threading.Event()

    def consume():
        c = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"kafkatool-latency-{os.getpid()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 10,
        })
        c.subscribe([out])
        while not stop.is_set():
            m = c.poll(0.05)
            if m is None or m.error():
                continue
            now = time.time() * 1000.0
            key = m.key().decode()
            if key in received:
                duplicates[0] += 1
            else:
                received[key] = now
        c.close()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "message.max.bytes": 20_000_000})

    def send(key, value):
        while True:
            try:
                p.produce(inp, key=key, value=value)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)

    # Warm-up: the model's first batches and the job's start are not measured.
    warm = [f"w{i}:0" for i in range(warmup)]
    for i, k in enumerate(warm):
        send(k, images[i % len(images)])
    p.flush(30)
    deadline = time.time() + 120
    while time.time() < deadline and not all(k in received for k in warm):
        time.sleep(0.05)
    if not all(k in received for k in warm):
        stop.set()
        sys.exit(f"latency: the warm-up labels did not arrive ({sum(k in received for k in warm)} of {warmup})")

    sent = {}
    n = int(rate * seconds)
    start = time.time()
    for i in range(n):
        due = start + i / rate
        while True:
            left = due - time.time()
            if left <= 0:
                break
            p.poll(min(left, 0.005))
        ms = time.time() * 1000.0
        key = f"{i}:{int(ms)}"
        sent[key] = ms
        send(key, images[i % len(images)])
    p.flush(30)
    deadline = time.time() + 60
    while time.time() < deadline and not all(k in received for k in sent):
        time.sleep(0.05)
    stop.set()
    t.join(5)
    lat = [received[k] - ms for k, ms in sent.items() if k in received]
    missing = sum(1 for k in sent if k not in received)
    if not lat:
        sys.exit("latency: no label arrived")
    print(
        f"latency n={len(lat)} p50_ms={percentile(lat, 50):.1f} p99_ms={percentile(lat, 99):.1f} "
        f"mean_ms={statistics.fmean(lat):.1f} max_ms={max(lat):.1f} missing={missing} "
        f"duplicates={duplicates[0]} rate={rate} seconds={seconds}"
    )


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"create": create, "count": count, "latency": latency}[cmd](*args)


if __name__ == "__main__":
    main()
