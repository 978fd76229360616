"""One lock for every schema migration the API process may run.

Alembic keeps its migration context in module globals, so two migrations running at once in
one process corrupt each other (seen as a segfault inside sqlite3). The API can trigger two:
opening the serving store applies ours, and the first MLflow lookup against a tracking
database that has no tables yet applies MLflow's. Both go through this lock.
"""

from __future__ import annotations

import threading

MIGRATION_LOCK = threading.Lock()
