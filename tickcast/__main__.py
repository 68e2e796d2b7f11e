"""``python -m tickcast`` runs the CLI."""

from tickcast.cli import main

raise SystemExit(main())
