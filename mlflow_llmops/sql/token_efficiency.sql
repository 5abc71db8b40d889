-- @question Which task types and endpoints use the most tokens per request, and how well do they cache?
-- @notes Requests, means and ratios are weighted by sample_weight (estimates when
--        estimated = 1); kept_traces is the raw count.
-- @param since_ms timestamp now-7d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column task_type  The llmops.task_type metadata
-- @column trace_name  The trace (endpoint) name
-- @column requests  Requests (weighted)
-- @column kept_traces  Traces stored (raw count)
-- @column avg_input_tokens  Mean input tokens per request (cached included)
-- @column avg_output_tokens  Mean output tokens per request
-- @column output_input_ratio  Output tokens per input token
-- @column cache_hit_ratio  Cached input tokens / input tokens
-- @column cost_per_1k_output_tokens_usd  Cost per 1,000 output tokens
-- @column estimated  1 if any trace of the row has a sample weight other than 1
SELECT
  t.task_type AS task_type,
  t.trace_name AS trace_name,
  CAST(ROUND(SUM(t.sample_weight)) AS BIGINT) AS requests,
  COUNT(*) AS kept_traces,
  SUM(t.sample_weight * t.input_tokens) / SUM(t.sample_weight) AS avg_input_tokens,
  SUM(t.sample_weight * t.output_tokens) / SUM(t.sample_weight) AS avg_output_tokens,
  SUM(t.sample_weight * t.output_tokens) / NULLIF(SUM(t.sample_weight * t.input_tokens), 0)
    AS output_input_ratio,
  SUM(t.sample_weight * t.cache_read_tokens) / NULLIF(SUM(t.sample_weight * t.input_tokens), 0)
    AS cache_hit_ratio,
  SUM(t.sample_weight * t.cost_usd) * 1000.0 / NULLIF(SUM(t.sample_weight * t.output_tokens), 0)
    AS cost_per_1k_output_tokens_usd,
  MAX(CASE WHEN t.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_traces AS t
WHERE t.total_tokens > 0
  AND t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY t.task_type, t.trace_name
ORDER BY avg_input_tokens DESC, task_type, trace_name
