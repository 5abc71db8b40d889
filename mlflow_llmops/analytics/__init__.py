"""Analytics over the MLflow tracking database: views, the SQL queries, the Parquet export and the engines that run them (SQLite, PostgreSQL, DuckDB, Spark)."""
