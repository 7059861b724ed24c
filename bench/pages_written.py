#!/usr/bin/env python3
"""Which B-trees a run wrote to: compares two copies of a SQLite store page
by page (before and after, both checkpointed) and names the table or index
each changed page belongs to (SQLite's `dbstat`).

Run: bench/pages_written.py BEFORE.db AFTER.db
Used for the threading-cost figures in docs/PERFORMANCE.md: in a large
store every index a message touches at a random position is a page read
and written per message.
"""

import collections
import sqlite3
import sys


def main():
    before, after = sys.argv[1], sys.argv[2]
    db = sqlite3.connect(after)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    owner = dict((page, name) for name, page in db.execute("SELECT name, pageno FROM dbstat"))
    changed = collections.Counter()
    with open(before, "rb") as old, open(after, "rb") as new:
        page = 0
        while True:
            page += 1
            a, b = old.read(page_size), new.read(page_size)
            if not b:
                break
            if a != b:
                changed[owner.get(page, "(free)")] += 1
    for name, count in changed.most_common():
        print(f"{count:8,} {name}")
    print(f"{sum(changed.values()):8,} pages in all")


if __name__ == "__main__":
    main()
