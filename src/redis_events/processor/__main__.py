"""Entry point of ``python -m redis_events.processor``."""

from redis_events.processor._cli import main

raise SystemExit(main())
