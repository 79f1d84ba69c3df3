"""Next/previous study of the review page: the worklist's order under its filters, on SQLite and
PostgreSQL (window functions ``lag``/``lead`` over the same ordering as the list)."""

from __future__ import annotations

from node.db.engine import Database
from node.db.repositories.worklist import WorklistFilter, neighbours
from tests.node.db.repositories.test_console_queries import _seed


def test_neighbours_follow_the_worklist_order_and_filters(db: Database) -> None:
    # jobs 1-9 succeeded, 10-12 failed; severity High on jobs 2, 5, 8, Low on 1, 4, 7
    _seed(db)
    high = WorklistFilter(severity="High")
    with db.read() as session:
        assert neighbours(session, WorklistFilter(), 5) == (6, 4)  # newest first
        assert neighbours(session, WorklistFilter(), 5, sort="oldest") == (4, 6)
        assert neighbours(session, WorklistFilter(), 5, sort="patient") == (4, 6)
        assert neighbours(session, high, 5) == (8, 2)
        assert neighbours(session, high, 8) == (None, 5)
        assert neighbours(session, high, 2) == (5, None)
        assert neighbours(session, high, 5, sort="oldest") == (2, 8)
        # a job outside the filter (just approved, or Low) keeps its place in the order
        assert neighbours(session, high, 4) == (5, 2)
        # failed jobs cannot be reviewed: never a neighbour, but their page still navigates
        assert neighbours(session, WorklistFilter(), 10) == (None, 9)
        assert neighbours(session, WorklistFilter(), 9) == (None, 8)
        assert neighbours(session, WorklistFilter(), 999) == (None, None)
