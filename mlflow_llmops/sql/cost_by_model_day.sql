-- @question What did each model cost per day?
-- @notes LLM spans only. cost_usd uses our calculator where the span was priced
--        (mlflow-llmops costs reprice) and MLflow's own cost otherwise; the two
--        *_spans columns say which. Unpriced spans are counted, never valued at $0.
-- @param since_ms timestamp now-30d  Start of the time range (inclusive; epoch ms or ISO date/time, UTC)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column day_ms  Start of the UTC day (epoch ms)
-- @column model  Model name as logged on the span
-- @column provider  Model provider
-- @column llm_calls  Number of LLM spans
-- @column cost_usd  Total cost in USD of the priced spans
-- @column llmops_priced_spans  Spans priced by our calculator
-- @column mlflow_priced_spans  Spans priced only by MLflow at write time
-- @column unpriced_spans  Spans with token usage but no price (cost unknown, not $0)
SELECT
  s.start_ms - s.start_ms % 86400000 AS day_ms,
  s.model AS model,
  s.provider AS provider,
  COUNT(*) AS llm_calls,
  SUM(s.cost_usd) AS cost_usd,
  SUM(CASE WHEN s.cost_source = 'llmops' AND s.cost_usd IS NOT NULL THEN 1 ELSE 0 END)
    AS llmops_priced_spans,
  SUM(CASE WHEN s.cost_source = 'mlflow' THEN 1 ELSE 0 END) AS mlflow_priced_spans,
  SUM(CASE WHEN s.cost_usd IS NULL
           THEN CASE WHEN s.input_tokens + s.output_tokens > 0 THEN 1 ELSE 0 END
           ELSE 0 END) AS unpriced_spans
FROM llmops_spans AS s
WHERE s.span_type IN ('LLM', 'CHAT_MODEL')
  AND s.model IS NOT NULL
  AND s.start_ms >= :since_ms
  AND s.start_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR s.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY s.start_ms - s.start_ms % 86400000, s.model, s.provider
ORDER BY day_ms, cost_usd DESC NULLS LAST, model, provider
