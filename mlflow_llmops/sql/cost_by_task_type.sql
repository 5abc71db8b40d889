-- @question What does each feature (task type) cost, in total and per request?
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column task_type  The llmops.task_type metadata (NULL: not set)
-- @column requests  Traces
-- @column users  Distinct users
-- @column cost_usd  Total cost in USD
-- @column cost_per_request_usd  cost_usd / requests
-- @column share_of_cost  This task type's fraction of all cost in the range
SELECT
  t.task_type AS task_type,
  COUNT(*) AS requests,
  COUNT(DISTINCT t.user_id) AS users,
  SUM(t.cost_usd) AS cost_usd,
  SUM(t.cost_usd) / COUNT(*) AS cost_per_request_usd,
  SUM(t.cost_usd) / NULLIF(SUM(SUM(t.cost_usd)) OVER (), 0) AS share_of_cost
FROM llmops_traces AS t
WHERE t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY t.task_type
ORDER BY cost_usd DESC NULLS LAST, task_type
