-- @question What did each model cost per day?
-- @notes LLM spans only. cost_usd uses our calculator where the span was priced
--        (mlflow-llmops costs reprice) and MLflow's own cost otherwise; the *_spans
--        columns say which. Unpriced spans are counted, never valued at $0. Counts and
--        cost are weighted by the trace's sample_weight (estimates when estimated = 1);
--        kept_spans is the raw number of spans stored.
-- @param since_ms timestamp now-30d  Start of the time range (inclusive; epoch ms or ISO date/time, UTC)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column day_ms  Start of the UTC day (epoch ms)
-- @column model  Model name as logged on the span
-- @column provider  Model provider
-- @column llm_calls  LLM calls (spans weighted by sample_weight)
-- @column kept_spans  LLM spans stored (raw count)
-- @column cost_usd  Total cost in USD of the priced spans (weighted)
-- @column llmops_priced_spans  Calls priced by our calculator (weighted)
-- @column mlflow_priced_spans  Calls priced only by MLflow at write time (weighted)
-- @column unpriced_spans  Calls with token usage but no price (cost unknown, not $0; weighted)
-- @column estimated  1 if any span of the row has a sample weight other than 1
SELECT
  s.start_ms - s.start_ms % 86400000 AS day_ms,
  s.model AS model,
  s.provider AS provider,
  CAST(ROUND(SUM(s.sample_weight)) AS BIGINT) AS llm_calls,
  COUNT(*) AS kept_spans,
  SUM(s.sample_weight * s.cost_usd) AS cost_usd,
  CAST(ROUND(SUM(CASE WHEN s.cost_source = 'llmops' AND s.cost_usd IS NOT NULL
                      THEN s.sample_weight ELSE 0 END)) AS BIGINT) AS llmops_priced_spans,
  CAST(ROUND(SUM(CASE WHEN s.cost_source = 'mlflow' THEN s.sample_weight ELSE 0 END)) AS BIGINT)
    AS mlflow_priced_spans,
  CAST(ROUND(SUM(CASE WHEN s.cost_usd IS NULL
                      THEN CASE WHEN s.input_tokens + s.output_tokens > 0
                                THEN s.sample_weight ELSE 0 END
                      ELSE 0 END)) AS BIGINT) AS unpriced_spans,
  MAX(CASE WHEN s.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_spans AS s
WHERE s.span_type IN ('LLM', 'CHAT_MODEL')
  AND s.model IS NOT NULL
  AND s.start_ms >= :since_ms
  AND s.start_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR s.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY s.start_ms - s.start_ms % 86400000, s.model, s.provider
ORDER BY day_ms, cost_usd DESC NULLS LAST, model, provider
