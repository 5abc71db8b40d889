-- @question How much did prompt caching save, per model?
-- @notes Needs priced spans (mlflow-llmops costs reprice). Savings are the cache-read
--        tokens valued at the model's uncached input price in the range, minus what
--        they actually cost; cache writes (a surcharge) are shown separately.
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column model  Model
-- @column provider  Provider
-- @column input_tokens  Uncached input tokens
-- @column cache_read_tokens  Input tokens served from the cache
-- @column cache_hit_ratio  cache_read_tokens / all input tokens
-- @column cache_read_cost_usd  What the cached tokens cost
-- @column cache_write_cost_usd  What writing the cache cost
-- @column saved_usd  What the cached tokens would have cost uncached, minus cache_read_cost_usd
SELECT
  c.model AS model,
  c.provider AS provider,
  SUM(c.input_tokens) AS input_tokens,
  SUM(c.cache_read_tokens) AS cache_read_tokens,
  CAST(SUM(c.cache_read_tokens) AS DOUBLE PRECISION)
    / NULLIF(SUM(c.input_tokens) + SUM(c.cache_read_tokens), 0) AS cache_hit_ratio,
  SUM(c.cache_read_cost_usd) AS cache_read_cost_usd,
  SUM(c.cache_write_cost_usd) AS cache_write_cost_usd,
  SUM(c.cache_read_tokens) * (SUM(c.input_cost_usd) / NULLIF(SUM(c.input_tokens), 0))
    - SUM(c.cache_read_cost_usd) AS saved_usd
FROM llmops_costs AS c
WHERE c.status <> 'unpriced'
  AND c.timestamp_ms >= :since_ms
  AND c.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR c.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY c.model, c.provider
ORDER BY saved_usd DESC NULLS LAST, model, provider
