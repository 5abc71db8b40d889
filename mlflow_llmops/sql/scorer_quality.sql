-- @question How do the scorers rate the traces (mean score, how many evaluated, how many failed)?
-- @notes Feedback assessments (scorers, LLM judges, people) on traces in the range, by
--        the trace's time. mean_score averages the numeric values (true/yes = 1,
--        false/no = 0) weighted by the trace's sample_weight, so under sampling it
--        estimates the mean over all traffic; invalidated (overridden) assessments are
--        left out.
-- @param since_ms timestamp now-1d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @column scorer  Assessment name
-- @column source_type  CODE, LLM_JUDGE or HUMAN
-- @column evaluations  Assessments stored (raw count)
-- @column scored  Assessments with a numeric value
-- @column failed  Assessments whose scorer failed (error set)
-- @column mean_score  Weighted mean of the numeric values
-- @column min_score  Lowest numeric value
-- @column max_score  Highest numeric value
-- @column estimated  1 if any scored trace has a sample weight other than 1
SELECT
  a.name AS scorer,
  a.source_type AS source_type,
  COUNT(*) AS evaluations,
  COUNT(a.value_num) AS scored,
  SUM(CASE WHEN a.error IS NOT NULL THEN 1 ELSE 0 END) AS failed,
  SUM(CASE WHEN a.value_num IS NOT NULL THEN COALESCE(t.sample_weight, 1.0) * a.value_num END)
    / NULLIF(SUM(CASE WHEN a.value_num IS NOT NULL THEN COALESCE(t.sample_weight, 1.0) END), 0)
    AS mean_score,
  MIN(a.value_num) AS min_score,
  MAX(a.value_num) AS max_score,
  MAX(CASE WHEN COALESCE(t.sample_weight, 1.0) <> 1 THEN 1 ELSE 0 END) AS estimated
FROM llmops_assessments AS a
LEFT JOIN llmops_traces AS t ON t.trace_id = a.trace_id
WHERE a.assessment_type = 'feedback'
  AND (a.valid IS NULL OR CAST(a.valid AS INTEGER) = 1)
  AND a.trace_timestamp_ms >= :since_ms
  AND a.trace_timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR a.experiment_id = CAST(:experiment_id AS BIGINT))
GROUP BY a.name, a.source_type
ORDER BY scorer, source_type
