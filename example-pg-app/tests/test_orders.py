"""Orders written through the app: each test starts from the seed, whatever the one before wrote."""

import pytest

SEEDED = [("book", 1), ("lamp", 2), ("pen", 10)]


def orders(app):
    return [(o["item"], o["quantity"]) for o in app.get("/orders").json()]


def test_the_seeded_orders_are_listed(dockapp_clean):
    assert orders(dockapp_clean) == SEEDED


@pytest.mark.parametrize("item", ["mug", "desk"])
def test_a_new_order_is_stored_after_the_seed(dockapp_clean, item):
    created = dockapp_clean.post("/orders", json={"item": item, "quantity": 3})
    assert created.status_code == 201
    assert created.json() == {"id": 4}  # the identity is back as seeded too
    assert orders(dockapp_clean) == [*SEEDED, (item, 3)]


def test_an_order_of_nothing_is_refused(dockapp_clean):
    assert dockapp_clean.post("/orders", json={"item": "air", "quantity": 0}).status_code == 400
    assert orders(dockapp_clean) == SEEDED


def test_cancelling_every_order_empties_the_list(dockapp_clean):
    assert dockapp_clean.delete("/orders").status_code == 204
    assert orders(dockapp_clean) == []


def test_the_next_test_sees_the_seed_again(dockapp_clean):
    assert orders(dockapp_clean) == SEEDED
