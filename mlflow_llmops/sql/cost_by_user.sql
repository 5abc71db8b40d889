-- @question Which users cost the most, and how much per request?
-- @notes Requests, tokens and cost are weighted by sample_weight (estimates when
--        estimated = 1); sessions counts the distinct sessions among the stored traces.
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @param limit int 50  How many users (most expensive first)
-- @column user_id  The mlflow.trace.user metadata (NULL: anonymous)
-- @column requests  Requests (weighted)
-- @column kept_traces  Traces stored (raw count)
-- @column sessions  Distinct sessions among the stored traces
-- @column total_tokens  Input plus output tokens (weighted)
-- @column cost_usd  Total cost in USD (weighted)
-- @column cost_per_request_usd  cost_usd / requests
-- @column estimated  1 if any trace of the row has a sample weight other than 1
SELECT
  t.user_id AS user_id,
  CAST(ROUND(SUM(t.sample_weight)) AS BIGINT) AS requests,
  COUNT(*) AS kept_traces,
  COUNT(DISTINCT t.session_id) AS sessions,
  CAST(ROUND(SUM(t.sample_weight * t.total_tokens)) AS BIGINT) AS total_tokens,
  SUM(t.sample_weight * t.cost_usd) AS cost_usd,
  SUM(t.sample_weight * t.cost_usd) / SUM(t.sample_weight) AS cost_per_request_usd,
  MAX(CASE WHEN t.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_traces AS t
WHERE t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY t.user_id
ORDER BY cost_usd DESC NULLS LAST, user_id
LIMIT :limit
