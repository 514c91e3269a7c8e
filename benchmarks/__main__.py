"""``python -m benchmarks`` is the ``augbench`` command."""

from benchmarks.cli import main

raise SystemExit(main())
