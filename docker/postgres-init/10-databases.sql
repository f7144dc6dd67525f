-- Run once by the postgres image, as $POSTGRES_USER, when its data volume is empty (mounted at
-- /docker-entrypoint-initdb.d). One server, two databases:
--   mlflow: the MLflow server's backend store (experiments, runs, the model registry);
--   optuna: `tracking.optuna_storage: postgresql://hpo@postgres:5432/optuna`, so that nightly runs share
--           the sampler's history and `warm_start` finds earlier runs.
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
