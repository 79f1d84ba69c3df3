"""``python -m app``: the same as the ``pacsnode`` command."""

from app.cli import main

raise SystemExit(main())
