"""Our own state store: tables, migrations, leases and fencing (SQLite or PostgreSQL)."""
