-- @question How much have we spent this month, and where will the month end?
-- @notes Two forecasts: the month-to-date average rate extended to the whole month, and
--        month-to-date plus the last 7 days' rate over the days left (reacts faster).
--        Spend is weighted by sample_weight (an estimate when estimated = 1).
-- @param month_start_ms timestamp month_start  Start of the month (default: this month, UTC)
-- @param month_end_ms timestamp month_end  Start of the next month
-- @param now_ms timestamp now  The moment to forecast from
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column spend_mtd_usd  Spend from month start to now
-- @column spend_last_7d_usd  Spend in the 7 days before now
-- @column elapsed_days  Days since month start
-- @column forecast_linear_usd  spend_mtd_usd / elapsed * month length
-- @column forecast_recent_usd  spend_mtd_usd + last-7-day daily rate * days left
-- @column kept_traces_mtd  Traces stored since month start (raw count)
-- @column estimated  1 if any trace read has a sample weight other than 1
SELECT
  COALESCE(SUM(CASE WHEN t.timestamp_ms >= :month_start_ms
                    THEN COALESCE(t.sample_weight * t.cost_usd, 0) ELSE 0 END), 0)
    AS spend_mtd_usd,
  COALESCE(SUM(CASE WHEN t.timestamp_ms >= :now_ms - 604800000
                    THEN COALESCE(t.sample_weight * t.cost_usd, 0) ELSE 0 END), 0)
    AS spend_last_7d_usd,
  (:now_ms - :month_start_ms) / 86400000.0 AS elapsed_days,
  COALESCE(SUM(CASE WHEN t.timestamp_ms >= :month_start_ms
                    THEN COALESCE(t.sample_weight * t.cost_usd, 0) ELSE 0 END), 0)
    * (:month_end_ms - :month_start_ms) / NULLIF(:now_ms - :month_start_ms, 0)
    AS forecast_linear_usd,
  COALESCE(SUM(CASE WHEN t.timestamp_ms >= :month_start_ms
                    THEN COALESCE(t.sample_weight * t.cost_usd, 0) ELSE 0 END), 0)
    + COALESCE(SUM(CASE WHEN t.timestamp_ms >= :now_ms - 604800000
                        THEN COALESCE(t.sample_weight * t.cost_usd, 0) ELSE 0 END), 0)
      / 7.0 * (:month_end_ms - :now_ms) / 86400000.0 AS forecast_recent_usd,
  SUM(CASE WHEN t.timestamp_ms >= :month_start_ms THEN 1 ELSE 0 END) AS kept_traces_mtd,
  COALESCE(MAX(CASE WHEN t.sample_weight <> 1 THEN 1 ELSE 0 END), 0) AS estimated
FROM llmops_traces AS t
WHERE t.timestamp_ms >= :now_ms - 604800000 - 2678400000
  AND t.timestamp_ms < :now_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
