-- @question Which users cost the most, and how much per request?
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @param limit int 50  How many users (most expensive first)
-- @column user_id  The mlflow.trace.user metadata (NULL: anonymous)
-- @column requests  Traces
-- @column sessions  Distinct sessions
-- @column total_tokens  Input plus output tokens
-- @column cost_usd  Total cost in USD
-- @column cost_per_request_usd  cost_usd / requests
SELECT
  t.user_id AS user_id,
  COUNT(*) AS requests,
  COUNT(DISTINCT t.session_id) AS sessions,
  SUM(t.total_tokens) AS total_tokens,
  SUM(t.cost_usd) AS cost_usd,
  SUM(t.cost_usd) / COUNT(*) AS cost_per_request_usd
FROM llmops_traces AS t
WHERE t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY t.user_id
ORDER BY cost_usd DESC NULLS LAST, user_id
LIMIT :limit
