-- @question Which individual requests were the most expensive?
-- @notes Each row is one stored trace and its own cost; sample_weight says how many
--        requests it stands for (1: kept by a tail rule, such as a cost threshold, or
--        not sampled).
-- @param since_ms timestamp now-1d  Start of the time range (inclusive)
-- @param until_ms timestamp now  End of the time range (exclusive)
-- @param experiment_id int null  Only this MLflow experiment id (default: all)
-- @param limit int 20  How many traces
-- @column trace_id  MLflow trace id (open it in the MLflow UI)
-- @column experiment_id  MLflow experiment id (for the MLflow UI link)
-- @column timestamp_ms  Trace start (epoch ms)
-- @column user_id  User
-- @column task_type  Task type
-- @column model  Model of the first LLM call
-- @column status  OK or ERROR
-- @column latency_ms  Duration
-- @column total_tokens  Input plus output tokens
-- @column cost_usd  Cost in USD
-- @column sample_weight  Requests this trace stands for under sampling
SELECT
  t.trace_id AS trace_id,
  t.experiment_id AS experiment_id,
  t.timestamp_ms AS timestamp_ms,
  t.user_id AS user_id,
  t.task_type AS task_type,
  t.model AS model,
  t.status AS status,
  t.latency_ms AS latency_ms,
  t.total_tokens AS total_tokens,
  t.cost_usd AS cost_usd,
  t.sample_weight AS sample_weight
FROM llmops_traces AS t
WHERE t.cost_usd IS NOT NULL
  AND t.timestamp_ms >= :since_ms
  AND t.timestamp_ms < :until_ms
  AND (CAST(:experiment_id AS BIGINT) IS NULL OR t.experiment_id = CAST(:experiment_id AS BIGINT))
ORDER BY t.cost_usd DESC, t.trace_id
LIMIT :limit
