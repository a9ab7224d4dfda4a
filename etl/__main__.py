"""``python -m etl`` is the ``etl`` command."""

from etl.cli import main

raise SystemExit(main())
