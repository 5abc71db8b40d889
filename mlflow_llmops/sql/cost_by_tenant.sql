-- @question Which tenants cost the most, and how much per request?
-- @notes Requests, tokens and cost are weighted by sample_weight (estimates when
--        estimated = 1); users counts the distinct users among the stored traces.
-- @param since_ms timestamp now-30d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @param limit int 50  How many tenants (most expensive first)
-- @column tenant  The llmops.tenant metadata (NULL: not set)
-- @column requests  Requests (weighted)
-- @column kept_traces  Traces stored (raw count)
-- @column users  Distinct users among the stored traces
-- @column total_tokens  Input plus output tokens (weighted)
-- @column cost_usd  Total cost in USD (weighted)
-- @column cost_per_request_usd  cost_usd / requests
-- @column share_of_cost  This tenant's fraction of all cost in the range
-- @column estimated  1 if any trace of the row has a sample weight other than 1
SELECT
  t.tenant AS tenant,
  CAST(ROUND(SUM(t.sample_weight)) AS BIGINT) AS requests,
  COUNT(*) AS kept_traces,
  COUNT(DISTINCT t.user_id) AS users,
  CAST(ROUND(SUM(t.sample_weight * t.total_tokens)) AS BIGINT) AS total_tokens,
  SUM(t.sample_weight * t.cost_usd) AS cost_usd,
  SUM(t.sample_weight * t.cost_usd) / SUM(t.sample_weight) AS cost_per_request_usd,
  SUM(t.sample_weight * t.cost_usd)
    / NULLIF(SUM(SUM(t.sample_weight * t.cost_usd)) OVER (), 0) AS share_of_cost,
  MAX(CASE WHEN t.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_traces AS t
WHERE t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY t.tenant
ORDER BY cost_usd DESC NULLS LAST, tenant
LIMIT :limit
