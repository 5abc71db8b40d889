-- @question What does a successful request cost per model, and what do 1,000 tokens cost?
-- @notes Failed requests still cost money: cost_per_success_usd divides all spend by
--        the successful requests only, so a rising error rate shows up as a rising price.
--        Counts, tokens and cost are weighted by sample_weight (estimates when estimated = 1).
-- @param since_ms timestamp now-7d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column model  Model of the trace's first LLM call
-- @column requests  Requests (weighted)
-- @column kept_traces  Traces stored (raw count)
-- @column successes  Requests with status OK (weighted)
-- @column cost_usd  Total cost in USD (weighted)
-- @column cost_per_success_usd  cost_usd / successes
-- @column cost_per_1k_tokens_usd  cost_usd * 1000 / total tokens
-- @column estimated  1 if any trace of the row has a sample weight other than 1
SELECT
  t.model AS model,
  CAST(ROUND(SUM(t.sample_weight)) AS BIGINT) AS requests,
  COUNT(*) AS kept_traces,
  CAST(ROUND(SUM(CASE WHEN t.status = 'OK' THEN t.sample_weight ELSE 0 END)) AS BIGINT)
    AS successes,
  SUM(t.sample_weight * t.cost_usd) AS cost_usd,
  SUM(t.sample_weight * t.cost_usd)
    / NULLIF(SUM(CASE WHEN t.status = 'OK' THEN t.sample_weight ELSE 0 END), 0)
    AS cost_per_success_usd,
  SUM(t.sample_weight * t.cost_usd) * 1000.0
    / NULLIF(SUM(t.sample_weight * t.total_tokens), 0) AS cost_per_1k_tokens_usd,
  MAX(CASE WHEN t.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_traces AS t
WHERE t.model IS NOT NULL
  AND t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY t.model
ORDER BY cost_usd DESC NULLS LAST, model
