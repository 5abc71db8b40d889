-- @question Which models are used without a price (so their cost is unknown, not $0)?
-- @notes Spans with token usage but no cost from us or MLflow. Fix by adding the model
--        to a price override file and re-pricing (mlflow-llmops costs reprice). Counts and
--        tokens are weighted by sample_weight (estimates when estimated = 1).
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column model  Model
-- @column provider  Provider
-- @column spans  Unpriced LLM calls (weighted)
-- @column kept_spans  Unpriced LLM spans stored (raw count)
-- @column traces  Requests containing them (weighted)
-- @column input_tokens  Their input tokens (weighted)
-- @column output_tokens  Their output tokens (weighted)
-- @column first_ms  First seen (epoch ms)
-- @column last_ms  Last seen (epoch ms)
-- @column estimated  1 if any span of the row has a sample weight other than 1
WITH per_trace AS (
  SELECT
    s.model AS model,
    s.provider AS provider,
    s.trace_id AS trace_id,
    MAX(s.sample_weight) AS w,
    COUNT(*) AS spans,
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
  GROUP BY s.model, s.provider, s.trace_id
)
SELECT
  model,
  provider,
  CAST(ROUND(SUM(w * spans)) AS BIGINT) AS spans,
  SUM(spans) AS kept_spans,
  CAST(ROUND(SUM(w)) AS BIGINT) AS traces,
  CAST(ROUND(SUM(w * input_tokens)) AS BIGINT) AS input_tokens,
  CAST(ROUND(SUM(w * output_tokens)) AS BIGINT) AS output_tokens,
  MIN(first_ms) AS first_ms,
  MAX(last_ms) AS last_ms,
  MAX(CASE WHEN w <> 1 THEN 1 ELSE 0 END) AS estimated
FROM per_trace
GROUP BY model, provider
ORDER BY spans DESC, model, provider
