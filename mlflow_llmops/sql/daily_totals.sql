-- @question How many requests, errors, tokens and dollars per day?
-- @notes One row per UTC day with traffic. cost_usd sums trace costs (ours, else MLflow's);
--        unpriced_traces counts traces with at least one unpriced LLM span. Under sampling
--        every count, token and cost figure is an estimate: each kept trace counts
--        llmops.sample_weight times (1/r for head-kept, 1 for tail-kept); estimated is 1 on
--        those rows and kept_traces is the number of traces actually stored.
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column day_ms  Start of the UTC day (epoch ms)
-- @column requests  Requests (traces weighted by sample_weight)
-- @column kept_traces  Traces stored (raw count, not weighted)
-- @column errors  Requests with status ERROR (weighted)
-- @column total_tokens  Input plus output tokens (weighted)
-- @column cost_usd  Total cost in USD (weighted)
-- @column unpriced_traces  Requests with an unpriced LLM span (weighted)
-- @column estimated  1 if any trace of the row has a sample weight other than 1 (the figures are estimates)
SELECT
  t.timestamp_ms - t.timestamp_ms % 86400000 AS day_ms,
  CAST(ROUND(SUM(t.sample_weight)) AS BIGINT) AS requests,
  COUNT(*) AS kept_traces,
  CAST(ROUND(SUM(CASE WHEN t.status = 'ERROR' THEN t.sample_weight ELSE 0 END)) AS BIGINT)
    AS errors,
  CAST(ROUND(SUM(t.sample_weight * t.total_tokens)) AS BIGINT) AS total_tokens,
  SUM(t.sample_weight * t.cost_usd) AS cost_usd,
  CAST(ROUND(SUM(CASE WHEN t.unpriced_spans > 0 THEN t.sample_weight ELSE 0 END)) AS BIGINT)
    AS unpriced_traces,
  MAX(CASE WHEN t.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_traces AS t
WHERE t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY t.timestamp_ms - t.timestamp_ms % 86400000
ORDER BY day_ms
