"""``python -m bpfnet`` is the ``bpfnet`` command."""

from .cli import main

raise SystemExit(main())
