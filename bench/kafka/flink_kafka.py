"""Apache Flink's side of the Kafka -> filter -> Kafka benchmark of bench/run-kafka.sh: the same
query as bench/kafka/filter.yaml in Flink SQL, with Flink's Kafka connector
(org.apache.flink:flink-sql-connector-kafka from Maven Central, fetched by
scripts/setup-flink.sh --kafka), on PyFlink's local mini-cluster.

usage: python flink_kafka.py BOOTSTRAP IN OUT GROUP PARALLELISM CONNECTOR_JAR

Reads IN from the earliest offset to the end it had at start (scan.bounded.mode latest-offset),
read_committed like weir, keeps amount > 500, writes JSON to OUT at least once. Prints one line
`flink kafka-filter parallelism=P job_s=S` (S: from submission to the end of the job).
"""

import sys
import time

from pyflink.common import Configuration
from pyflink.table import EnvironmentSettings, TableEnvironment

COLUMNS = "id BIGINT, `user` INT, amount DOUBLE, category STRING, note STRING"


def main():
    bootstrap, inp, out, group, parallelism, jar = sys.argv[1:7]
    conf = Configuration()
    conf.set_string("parallelism.default", parallelism)
    conf.set_string("taskmanager.numberOfTaskSlots", parallelism)
    conf.set_string("pipeline.jars", "file://" + jar)
    settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
    t = TableEnvironment.create(settings)
    t.execute_sql(
        f"""
        CREATE TABLE src ({COLUMNS}) WITH (
            'connector' = 'kafka',
            'topic' = '{inp}',
            'properties.bootstrap.servers' = '{bootstrap}',
            'properties.group.id' = '{group}',
            'properties.isolation.level' = 'read_committed',
            'scan.startup.mode' = 'earliest-offset',
            'scan.bounded.mode' = 'latest-offset',
            'format' = 'json'
        )"""
    )
    t.execute_sql(
        f"""
        CREATE TABLE dst ({COLUMNS}) WITH (
            'connector' = 'kafka',
            'topic' = '{out}',
            'properties.bootstrap.servers' = '{bootstrap}',
            'sink.delivery-guarantee' = 'at-least-once',
            'format' = 'json'
        )"""
    )
    started = time.time()
    t.execute_sql("INSERT INTO dst SELECT * FROM src WHERE amount > 500").wait()
    print(f"flink kafka-filter parallelism={parallelism} job_s={time.time() - started:.3f}")


if __name__ == "__main__":
    main()
