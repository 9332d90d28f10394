#!/usr/bin/env python3
"""Checks weir's answer to a Nexmark query against DuckDB's, over the same events.

usage: check.py QUERY EVENTS_DIR WEIR_OUTPUT_DIR [MIN_ROWS]

EVENTS_DIR holds the Parquet dump of the generated events (examples/nexmark/events.yaml):
person/, auction/ and bid/. QUERY is q0, q1, ... . The query is computed here, independently of
weir, in DuckDB's SQL (the Nexmark benchmark's own definitions), and compared with the rows weir
wrote under WEIR_OUTPUT_DIR as multisets: every row must appear exactly as often on both sides.
Exits 0 when they are equal and have at least MIN_ROWS rows (default 1: an empty answer checks
nothing); otherwise prints the counts and a sample of the differing rows on both sides and
exits 1.

Run it with the interpreter of scripts/setup-duckdb.sh's venv.
"""

import sys

import duckdb

# Each query: (reference SQL over the views person/auction/bid, the canonical form of an output
# row for comparison: the same column list applied to both sides).
QUERIES = {
    # Pass-through.
    "q0": (
        "SELECT auction, bidder, price, date_time, extra FROM bid",
        "auction, bidder, price, date_time, extra",
    ),
    # Currency conversion, exact to three decimal places (Flink: DECIMAL(23, 3)).
    "q1": (
        "SELECT auction, bidder, CAST(price AS DECIMAL(20, 0)) * 0.908 AS price, date_time, extra"
        " FROM bid",
        "auction, bidder, CAST(price AS DECIMAL(38, 3)) AS price, date_time, extra",
    ),
    # Selection.
    "q2": (
        "SELECT auction, price FROM bid WHERE auction % 123 = 0",
        "auction, price",
    ),
    # Local item suggestion: sellers in OR, ID or CA of auctions in category 10.
    "q3": (
        "SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person P ON A.seller = P.id"
        " WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')",
        "name, city, state, id",
    ),
    # Average closing price per category: the highest bid of each auction made while it was
    # open, averaged per category.
    "q4": (
        "SELECT category, AVG(final) AS final FROM ("
        "  SELECT MAX(B.price) AS final, A.category FROM auction A, bid B"
        "  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires"
        "  GROUP BY A.id, A.category) Q GROUP BY category",
        "category, ROUND(CAST(final AS DOUBLE), 6) AS final",
    ),
    # Hot items: per 10 s window sliding by 2 s, the auctions with the most bids.
    "q5": (
        "WITH w AS (SELECT DISTINCT ws FROM ("
        "    SELECT time_bucket(INTERVAL 2 SECOND, date_time) - INTERVAL 2 SECOND * k AS ws"
        "    FROM bid, range(5) t(k))),"
        " counts AS (SELECT B.auction, w.ws, COUNT(*) AS num FROM bid B JOIN w"
        "    ON B.date_time >= w.ws AND B.date_time < w.ws + INTERVAL 10 SECOND"
        "    GROUP BY B.auction, w.ws),"
        " maxn AS (SELECT ws, MAX(num) AS maxn FROM counts GROUP BY ws)"
        " SELECT c.auction, c.num FROM counts c JOIN maxn m ON c.ws = m.ws AND c.num >= m.maxn",
        "auction, num",
    ),
    # Highest bid per 10 s tumbling window, joined back to the bids at that price in the 10 s up
    # to the window's row time (TUMBLE_ROWTIME: its end - 1 ms), as Nexmark's q7.sql has it.
    "q7": (
        "WITH m AS (SELECT time_bucket(INTERVAL 10 SECOND, date_time) + INTERVAL 10 SECOND AS we,"
        "    MAX(price) AS maxprice FROM bid GROUP BY 1)"
        " SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B JOIN m"
        " ON B.price = m.maxprice"
        " AND B.date_time BETWEEN m.we - INTERVAL 10001 MILLISECOND"
        "    AND m.we - INTERVAL 1 MILLISECOND",
        "auction, price, bidder, date_time, extra",
    ),
    # New users: people who created an auction in the same 10 s tumbling window they joined in.
    "q8": (
        "WITH P AS (SELECT DISTINCT id, name, time_bucket(INTERVAL 10 SECOND, date_time) AS ws"
        "    FROM person),"
        " A AS (SELECT DISTINCT seller, time_bucket(INTERVAL 10 SECOND, date_time) AS ws"
        "    FROM auction)"
        " SELECT P.id, P.name, P.ws AS starttime FROM P JOIN A ON P.id = A.seller AND P.ws = A.ws",
        "id, name, starttime",
    ),
}


def main():
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in QUERIES:
        sys.exit(__doc__ + "\nqueries: " + ", ".join(QUERIES))
    query, events, weir_out = sys.argv[1:4]
    min_rows = int(sys.argv[4]) if len(sys.argv) == 5 else 1
    sql, canonical = QUERIES[query]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in ("person", "auction", "bid"):
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{events}/{table}/*.parquet')"
        )
    con.execute(f"CREATE TABLE expected AS SELECT {canonical} FROM ({sql})")
    con.execute(
        f"CREATE TABLE actual AS SELECT {canonical}"
        f" FROM read_parquet('{weir_out}/*.parquet')"
    )
    n_expected = con.execute("SELECT COUNT(*) FROM expected").fetchone()[0]
    n_actual = con.execute("SELECT COUNT(*) FROM actual").fetchone()[0]
    missing = con.execute(
        "SELECT * FROM (SELECT * FROM expected EXCEPT ALL SELECT * FROM actual) LIMIT 5"
    ).fetchall()
    extra = con.execute(
        "SELECT * FROM (SELECT * FROM actual EXCEPT ALL SELECT * FROM expected) LIMIT 5"
    ).fetchall()
    if missing or extra or n_expected != n_actual:
        print(f"{query}: DuckDB has {n_expected} rows, weir {n_actual}")
        for r in missing:
            print(f"  only in DuckDB's answer: {r}")
        for r in extra:
            print(f"  only in weir's answer:   {r}")
        sys.exit(1)
    if n_expected < min_rows:
        print(f"{query}: both answers have {n_expected} rows, fewer than the {min_rows} the check"
              " needs; it needs more events")
        sys.exit(1)
    print(f"{query}: {n_actual} rows, equal to DuckDB's answer")


if __name__ == "__main__":
    main()
