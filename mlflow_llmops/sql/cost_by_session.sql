-- @question Which sessions (conversations) cost the most?
-- @param since_ms timestamp now-7d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @param user_id string null  Only this user (default: all)
-- @param limit int 50  How many sessions (most expensive first)
-- @column session_id  The mlflow.trace.session metadata
-- @column user_id  User of the session's first trace
-- @column requests  Traces in the session
-- @column first_ms  First trace start (epoch ms)
-- @column last_ms  Last trace start (epoch ms)
-- @column cost_usd  Total cost in USD
SELECT
  t.session_id AS session_id,
  MIN(t.user_id) AS user_id,
  COUNT(*) AS requests,
  MIN(t.timestamp_ms) AS first_ms,
  MAX(t.timestamp_ms) AS last_ms,
  SUM(t.cost_usd) AS cost_usd
FROM llmops_traces AS t
WHERE t.session_id IS NOT NULL
  AND t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
  AND (CAST(:user_id AS VARCHAR) IS NULL OR t.user_id = CAST(:user_id AS VARCHAR))
GROUP BY t.session_id
ORDER BY cost_usd DESC NULLS LAST, session_id
LIMIT :limit
