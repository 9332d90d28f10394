"""Apache Flink's side of bench/run-nexmark.sh: one Nexmark query over a datagen bid stream with
the same columns and distributions as bench/nexmark/qN.yaml, to a blackhole sink, on PyFlink's
local mini-cluster (the JVM PyFlink starts; measure.py counts the CPU of the whole process tree).
The queries are the Nexmark benchmark's Flink SQL (github.com/nexmark/nexmark, queries/qN.sql).

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
    # Hot items: per window of 10 s sliding by 2 s, the auctions with the most bids.
    "q5": """
        SELECT AuctionBids.auction, AuctionBids.num FROM (
            SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
            FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND,
                           INTERVAL '10' SECOND))
            GROUP BY auction, window_start, window_end
        ) AS AuctionBids
        JOIN (
            SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM (
                SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
                FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND,
                               INTERVAL '10' SECOND))
                GROUP BY auction, window_start, window_end
            ) AS CountBids
            GROUP BY CountBids.starttime, CountBids.endtime
        ) AS MaxBids
        ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
            AND AuctionBids.num >= MaxBids.maxn""",
    # Highest bid, as the Nexmark benchmark's Flink SQL writes it (nexmark/queries/q7.sql): the
    # maximum price of each 10 s tumbling window, with the window's row time (its end - 1 ms),
    # joined back to the bids of the 10 s up to that row time. Both sides carry a time attribute,
    # so Flink plans an interval join (bids kept 10 s of event time).
    "q7": """
        SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B
        JOIN (
            SELECT MAX(B1.price) AS maxprice,
                TUMBLE_ROWTIME(B1.date_time, INTERVAL '10' SECOND) AS date_time
            FROM bid B1
            GROUP BY TUMBLE(B1.date_time, INTERVAL '10' SECOND)
        ) B1
        ON B.price = B1.maxprice
        WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time""",
}
SINKS = {
    "q0": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, "
    "date_time TIMESTAMP(3), extra STRING",
    "q1": "auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), date_time TIMESTAMP(3), "
    "extra STRING",
    "q2": "auction BIGINT, price BIGINT",
    "q5": "auction BIGINT, num BIGINT",
    "q7": "auction BIGINT, price BIGINT, bidder BIGINT, date_time TIMESTAMP_LTZ(3), extra STRING",
}
# Queries over event time: their date_time is a row number's time at 10 000 bids per second from
# 2024-01-01 (as weir's `kind: timestamp, rate: 10000`), watermarked as ascending.
EVENT_TIME = {"q5", "q7"}


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
    # Same columns and distributions as weir's datagen in bench/nexmark/qN.yaml. For q0-q2,
    # Flink's datagen makes random timestamps (weir's advance at 1 M rows/s of event time); they
    # only carry them. For the windowed queries date_time is computed from a row number (Flink's
    # sequence generator, split among the subtasks as weir's datagen splits rows).
    if query in EVENT_TIME:
        time_columns = (
            "seq BIGINT, extra STRING, "
            "date_time AS TO_TIMESTAMP_LTZ(1704067200000 + seq / 10, 3), "
            "WATERMARK FOR date_time AS date_time"
        )
        time_options = (
            f"'fields.seq.kind' = 'sequence', 'fields.seq.start' = '0', "
            f"'fields.seq.end' = '{events - 1}',"
        )
    else:
        time_columns = "date_time TIMESTAMP(3), extra STRING"
        time_options = ""
    t.execute_sql(
        f"""
        CREATE TABLE bid (
            auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
            {time_columns}
        ) WITH (
            'connector' = 'datagen',
            'number-of-rows' = '{events}',
            'rows-per-second' = '1000000000',
            {time_options}
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
