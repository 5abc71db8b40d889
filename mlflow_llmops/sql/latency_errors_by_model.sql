-- @question How fast and how reliable is each model (error rate, latency percentiles)?
-- @notes Percentiles are nearest-rank over LLM spans (exact, and the same on every database).
-- @param since_ms timestamp now-1d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column model  Model
-- @column calls  LLM spans
-- @column errors  Spans with status ERROR
-- @column error_rate  errors / calls
-- @column p50_ms  Median latency
-- @column p90_ms  90th percentile latency
-- @column p99_ms  99th percentile latency
-- @column max_ms  Slowest call
WITH ranked AS (
  SELECT
    s.model AS model,
    s.status AS status,
    s.latency_ms AS latency_ms,
    ROW_NUMBER() OVER (PARTITION BY s.model ORDER BY s.latency_ms, s.trace_id, s.span_id) AS rn,
    COUNT(*) OVER (PARTITION BY s.model) AS n
  FROM llmops_spans AS s
  WHERE s.span_type IN ('LLM', 'CHAT_MODEL')
    AND s.model IS NOT NULL
    AND s.start_ms >= :since_ms
    AND s.start_ms < :until_ms
    AND (CAST(:experiment_id AS BIGINT) IS NULL OR s.experiment_id = CAST(:experiment_id AS BIGINT))
)
SELECT
  model,
  COUNT(*) AS calls,
  SUM(CASE WHEN status = 'ERROR' THEN 1 ELSE 0 END) AS errors,
  CAST(SUM(CASE WHEN status = 'ERROR' THEN 1 ELSE 0 END) AS DOUBLE PRECISION) / COUNT(*)
    AS error_rate,
  MIN(CASE WHEN rn * 100 >= 50 * n THEN latency_ms END) AS p50_ms,
  MIN(CASE WHEN rn * 100 >= 90 * n THEN latency_ms END) AS p90_ms,
  MIN(CASE WHEN rn * 100 >= 99 * n THEN latency_ms END) AS p99_ms,
  MAX(latency_ms) AS max_ms
FROM ranked
GROUP BY model
ORDER BY calls DESC, model
