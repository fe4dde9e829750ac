from pathlib import Path

import pytest

SEED = Path(__file__).parent.parent / "db" / "seed.sql"


@pytest.fixture(scope="session")
def dockapp_seed(dockapp_services):
    # Once per stack; dockapp_clean puts the database back to this before every test.
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "shop", "-v", "ON_ERROR_STOP=1"]
    code, out = dockapp_services["db"].exec([*psql, "-c", SEED.read_text()])
    assert code == 0, out
