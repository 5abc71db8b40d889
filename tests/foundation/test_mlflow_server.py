import mlflow
from mlflow import MlflowClient


def test_real_server_on_sqlite_accepts_traces(mlflow_server_sqlite):
    client = MlflowClient(tracking_uri=mlflow_server_sqlite.url)
    exp = client.create_experiment("foundation-smoke")
    assert client.get_experiment(exp).name == "foundation-smoke"


def test_real_server_on_postgres(mlflow_server_pg):
    client = MlflowClient(tracking_uri=mlflow_server_pg.url)
    exp = client.create_experiment("foundation-smoke-pg")
    assert client.get_experiment(exp).experiment_id == exp
    from packaging.version import Version

    assert Version("3.17.2") <= Version(mlflow.__version__) < Version("3.19")  # supported range
