"""Apache Flink's side of bench/run-nexmark.sh: one Nexmark query over a datagen bid stream with
the same columns and distributions as bench/nexmark/qN.yaml, to a blackhole sink, on PyFlink's
local mini-cluster (the JVM PyFlink starts; measure.py counts the CPU of the whole process tree).

usage: python flink_nexmark.py QUERY EVENTS PARALLELISM CHECKPOINT_DIR|-

Prints one line: `flink QUERY events=N parallelism=P checkpoints=on|off job_s=S` (S: the job's
wall time from submission to end, start-up of the JVM and planner excluded).
"""

import sys
import time

from pyflink.common import Configuration
from pyflink.table import EnvironmentSettings, TableEnvironment

QUERIES = {
    "q0": "SELECT auction, bidder, price, channel, url, date_time, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
}
SINKS = {
    "q0": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, "
    "date_time TIMESTAMP(3), extra STRING",
    "q1": "auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), date_time TIMESTAMP(3), "
    "extra STRING",
    "q2": "auction BIGINT, price BIGINT",
}


def main():
    query, events, parallelism, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    conf = Configuration()
    conf.set_string("parallelism.default", str(parallelism))
    conf.set_string("taskmanager.numberOfTaskSlots", str(parallelism))
    if ckpt != "-":
        conf.set_string("execution.checkpointing.interval", "10s")
        conf.set_string("execution.checkpointing.dir", "file://" + ckpt)
    settings = EnvironmentSettings.new_instance().in_streaming_mode().with_configuration(conf).build()
    t = TableEnvironment.create(settings)
    # Same columns and distributions as weir's datagen in bench/nexmark/qN.yaml. Flink's datagen
    # makes random timestamps (weir's advance at 1 M rows/s of event time); q0-q2 only carry them.
    t.execute_sql(
        f"""
        CREATE TABLE bid (
            auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
            date_time TIMESTAMP(3), extra STRING
        ) WITH (
            'connector' = 'datagen',
            'number-of-rows' = '{events}',
            'rows-per-second' = '1000000000',
            'fields.auction.min' = '1000', 'fields.auction.max' = '1999',
            'fields.bidder.min' = '1000', 'fields.bidder.max' = '100999',
            'fields.price.min' = '1', 'fields.price.max' = '100000',
            'fields.channel.length' = '8',
            'fields.url.length' = '40',
            'fields.extra.length' = '20'
        )"""
    )
    t.execute_sql(f"CREATE TABLE out_sink ({SINKS[query]}) WITH ('connector' = 'blackhole')")
    started = time.monotonic()
    t.execute_sql(f"INSERT INTO out_sink {QUERIES[query]}").wait()
    job_s = time.monotonic() - started
    print(
        f"flink {query} events={events} parallelism={parallelism} "
        f"checkpoints={'off' if ckpt == '-' else 'on'} job_s={job_s:.2f}"
    )


if __name__ == "__main__":
    main()
