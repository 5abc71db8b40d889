-- @question Which models are used without a price (so their cost is unknown, not $0)?
-- @notes Spans with token usage but no cost from us or MLflow. Fix by adding the model
--        to a price override file and re-pricing (mlflow-llmops costs reprice).
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column model  Model
-- @column provider  Provider
-- @column spans  Unpriced LLM spans
-- @column traces  Traces containing them
-- @column input_tokens  Their input tokens
-- @column output_tokens  Their output tokens
-- @column first_ms  First seen (epoch ms)
-- @column last_ms  Last seen (epoch ms)
SELECT
  s.model AS model,
  s.provider AS provider,
  COUNT(*) AS spans,
  COUNT(DISTINCT s.trace_id) AS traces,
  SUM(s.input_tokens) AS input_tokens,
  SUM(s.output_tokens) AS output_tokens,
  MIN(s.start_ms) AS first_ms,
  MAX(s.start_ms) AS last_ms
FROM llmops_spans AS s
WHERE s.span_type IN ('LLM', 'CHAT_MODEL')
  AND s.cost_usd IS NULL
  -- Token usage is in each span's JSON: the CASE reads it only for spans without a cost
  -- (a plain filter would have PostgreSQL parse every LLM span's JSON first).
  AND CASE WHEN s.cost_usd IS NULL THEN s.input_tokens + s.output_tokens ELSE 0 END > 0
  AND s.start_ms >= :since_ms
  AND s.start_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR s.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY s.model, s.provider
ORDER BY spans DESC, model, provider
