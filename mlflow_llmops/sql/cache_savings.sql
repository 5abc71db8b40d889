-- @question How much did prompt caching save, per model?
-- @notes Needs priced spans (mlflow-llmops costs reprice). Savings are the cache-read
--        tokens valued at the model's uncached input price in the range, minus what
--        they actually cost; cache writes (a surcharge) are shown separately. Tokens and
--        costs are weighted by sample_weight (estimates when estimated = 1).
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column model  Model
-- @column provider  Provider
-- @column kept_spans  Priced spans stored (raw count)
-- @column input_tokens  Uncached input tokens (weighted)
-- @column cache_read_tokens  Input tokens served from the cache (weighted)
-- @column cache_hit_ratio  cache_read_tokens / all input tokens
-- @column cache_read_cost_usd  What the cached tokens cost
-- @column cache_write_cost_usd  What writing the cache cost
-- @column saved_usd  What the cached tokens would have cost uncached, minus cache_read_cost_usd
-- @column estimated  1 if any span of the row has a sample weight other than 1
SELECT
  c.model AS model,
  c.provider AS provider,
  COUNT(*) AS kept_spans,
  CAST(ROUND(SUM(c.sample_weight * c.input_tokens)) AS BIGINT) AS input_tokens,
  CAST(ROUND(SUM(c.sample_weight * c.cache_read_tokens)) AS BIGINT) AS cache_read_tokens,
  SUM(c.sample_weight * c.cache_read_tokens)
    / NULLIF(SUM(c.sample_weight * c.input_tokens)
             + SUM(c.sample_weight * c.cache_read_tokens), 0) AS cache_hit_ratio,
  SUM(c.sample_weight * c.cache_read_cost_usd) AS cache_read_cost_usd,
  SUM(c.sample_weight * c.cache_write_cost_usd) AS cache_write_cost_usd,
  SUM(c.sample_weight * c.cache_read_tokens)
    * (SUM(c.sample_weight * c.input_cost_usd) / NULLIF(SUM(c.sample_weight * c.input_tokens), 0))
    - SUM(c.sample_weight * c.cache_read_cost_usd) AS saved_usd,
  MAX(CASE WHEN c.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_costs AS c
WHERE c.status <> 'unpriced'
  AND c.timestamp_ms >= :since_ms
  AND c.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR c.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY c.model, c.provider
ORDER BY saved_usd DESC NULLS LAST, model, provider
