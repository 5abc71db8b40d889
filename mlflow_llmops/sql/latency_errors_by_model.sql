-- @question How fast and how reliable is each model (error rate, latency percentiles)?
-- @notes Over LLM spans, each weighted by its trace's sample_weight. Percentiles are
--        weighted nearest-rank (the first latency whose cumulative weight reaches q of the
--        total, as the alerting computes them): exact, and the same on every database.
--        Counts are estimates when estimated = 1; kept_spans is the raw count.
-- @param since_ms timestamp now-1d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column model  Model
-- @column calls  LLM calls (weighted)
-- @column kept_spans  LLM spans stored (raw count)
-- @column errors  Calls with status ERROR (weighted)
-- @column error_rate  errors / calls
-- @column p50_ms  Median latency
-- @column p90_ms  90th percentile latency
-- @column p99_ms  99th percentile latency
-- @column max_ms  Slowest call stored
-- @column estimated  1 if any span of the row has a sample weight other than 1
WITH ranked AS (
  SELECT
    s.model AS model,
    s.status AS status,
    s.latency_ms AS latency_ms,
    s.sample_weight AS w,
    SUM(s.sample_weight) OVER (
      PARTITION BY s.model ORDER BY s.latency_ms, s.trace_id, s.span_id
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS cum,
    SUM(s.sample_weight) OVER (PARTITION BY s.model) AS tot
  FROM llmops_spans AS s
  WHERE s.span_type IN ('LLM', 'CHAT_MODEL')
    AND s.model IS NOT NULL
    AND s.start_ms >= :since_ms
    AND s.start_ms < :until_ms
    AND (CAST(:experiment_id AS BIGINT) IS NULL OR s.experiment_id = CAST(:experiment_id AS BIGINT))
)
SELECT
  model,
  CAST(ROUND(SUM(w)) AS BIGINT) AS calls,
  COUNT(*) AS kept_spans,
  CAST(ROUND(SUM(CASE WHEN status = 'ERROR' THEN w ELSE 0 END)) AS BIGINT) AS errors,
  SUM(CASE WHEN status = 'ERROR' THEN w ELSE 0 END) / SUM(w) AS error_rate,
  MIN(CASE WHEN cum >= 0.5 * tot - 1e-9 THEN latency_ms END) AS p50_ms,
  MIN(CASE WHEN cum >= 0.9 * tot - 1e-9 THEN latency_ms END) AS p90_ms,
  MIN(CASE WHEN cum >= 0.99 * tot - 1e-9 THEN latency_ms END) AS p99_ms,
  MAX(latency_ms) AS max_ms,
  MAX(CASE WHEN w <> 1 THEN 1 ELSE 0 END) AS estimated
FROM ranked
GROUP BY model
ORDER BY calls DESC, model
