-- @question Which sessions (conversations) cost the most?
-- @notes Requests and cost are weighted by sample_weight (estimates when estimated = 1);
--        under sampling a session's figures extrapolate from the traces kept of it.
-- @param since_ms timestamp now-7d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @param user_id string null  Only this user (default: all)
-- @param limit int 50  How many sessions (most expensive first)
-- @column session_id  The mlflow.trace.session metadata
-- @column user_id  User of the session's first trace
-- @column requests  Requests in the session (weighted)
-- @column kept_traces  Traces stored (raw count)
-- @column first_ms  First trace start (epoch ms)
-- @column last_ms  Last trace start (epoch ms)
-- @column cost_usd  Total cost in USD (weighted)
-- @column estimated  1 if any trace of the row has a sample weight other than 1
SELECT
  t.session_id AS session_id,
  MIN(t.user_id) AS user_id,
  CAST(ROUND(SUM(t.sample_weight)) AS BIGINT) AS requests,
  COUNT(*) AS kept_traces,
  MIN(t.timestamp_ms) AS first_ms,
  MAX(t.timestamp_ms) AS last_ms,
  SUM(t.sample_weight * t.cost_usd) AS cost_usd,
  MAX(CASE WHEN t.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_traces AS t
WHERE t.session_id IS NOT NULL
  AND t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
  AND (CAST(:user_id AS VARCHAR) IS NULL OR t.user_id = CAST(:user_id AS VARCHAR))
GROUP BY t.session_id
ORDER BY cost_usd DESC NULLS LAST, session_id
LIMIT :limit
