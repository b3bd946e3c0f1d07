import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real SQLite MLflow store per test module (creating its tables takes seconds)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
