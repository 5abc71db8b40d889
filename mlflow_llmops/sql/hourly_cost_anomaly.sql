-- @question Is this hour's spend per model unusual against the same hour on the previous 7 days?
-- @notes The baseline is the mean over the 7 previous days at the same hour (a day
--        without spend counts as $0). is_anomaly is 1 when the hour cost more than
--        factor times the baseline and more than min_usd. Spend is weighted by
--        sample_weight (estimates when estimated = 1).
-- @param hour_start_ms timestamp last_hour  Start of the hour to check (default: the last complete hour)
-- @param factor float 2.0  How many times the baseline counts as anomalous
-- @param min_usd float 0.0  Ignore hours cheaper than this
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column model  Model of the trace's first LLM call
-- @column cost_usd  Spend in the hour (weighted)
-- @column baseline_usd  Mean spend in the same hour over the previous 7 days
-- @column baseline_max_usd  Highest of those 7 hours
-- @column ratio  cost_usd / baseline_usd (NULL when the baseline is 0)
-- @column is_anomaly  1 if anomalous, else 0
-- @column kept_traces  Traces stored in the hour (raw count)
-- @column estimated  1 if any trace of the 8 hours has a sample weight other than 1
WITH hourly AS (
  SELECT
    t.model AS model,
    ((t.timestamp_ms - (:hour_start_ms - 604800000))
      - (t.timestamp_ms - (:hour_start_ms - 604800000)) % 86400000) / 86400000 AS day_index,
    SUM(COALESCE(t.sample_weight * t.cost_usd, 0)) AS cost_usd,
    COUNT(*) AS kept,
    MAX(CASE WHEN t.sample_weight <> 1 THEN 1 ELSE 0 END) AS estimated
  FROM llmops_traces AS t
  WHERE t.timestamp_ms >= :hour_start_ms - 604800000
    AND t.timestamp_ms < :hour_start_ms + 3600000
    AND (t.timestamp_ms - (:hour_start_ms - 604800000)) % 86400000 < 3600000
    AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
  GROUP BY t.model, ((t.timestamp_ms - (:hour_start_ms - 604800000))
      - (t.timestamp_ms - (:hour_start_ms - 604800000)) % 86400000) / 86400000
), per_model AS (
  SELECT
    model,
    SUM(CASE WHEN day_index >= 7 THEN cost_usd ELSE 0.0 END) AS cost_usd,
    SUM(CASE WHEN day_index < 7 THEN cost_usd ELSE 0.0 END) / 7.0 AS baseline_usd,
    MAX(CASE WHEN day_index < 7 THEN cost_usd ELSE 0.0 END) AS baseline_max_usd,
    SUM(CASE WHEN day_index >= 7 THEN kept ELSE 0 END) AS kept_traces,
    MAX(estimated) AS estimated
  FROM hourly
  GROUP BY model
)
SELECT
  model,
  cost_usd,
  baseline_usd,
  baseline_max_usd,
  cost_usd / NULLIF(baseline_usd, 0) AS ratio,
  CASE WHEN cost_usd > :factor * baseline_usd AND cost_usd > :min_usd THEN 1 ELSE 0 END
    AS is_anomaly,
  kept_traces,
  estimated
FROM per_model
ORDER BY is_anomaly DESC, cost_usd DESC, model
