-- @question How many requests, errors, tokens and dollars per day?
-- @notes One row per UTC day with traffic. cost_usd sums trace costs (ours, else MLflow's);
--        unpriced_traces counts traces with at least one unpriced LLM span.
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column day_ms  Start of the UTC day (epoch ms)
-- @column requests  Traces
-- @column errors  Traces with status ERROR
-- @column total_tokens  Input plus output tokens
-- @column cost_usd  Total cost in USD
-- @column unpriced_traces  Traces with an unpriced LLM span
SELECT
  t.timestamp_ms - t.timestamp_ms % 86400000 AS day_ms,
  COUNT(*) AS requests,
  SUM(CASE WHEN t.status = 'ERROR' THEN 1 ELSE 0 END) AS errors,
  SUM(t.total_tokens) AS total_tokens,
  SUM(t.cost_usd) AS cost_usd,
  SUM(CASE WHEN t.unpriced_spans > 0 THEN 1 ELSE 0 END) AS unpriced_traces
FROM llmops_traces AS t
WHERE t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY t.timestamp_ms - t.timestamp_ms % 86400000
ORDER BY day_ms
