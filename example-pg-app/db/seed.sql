-- The data every test starts from (the app made the table at start).
INSERT INTO orders (item, quantity) VALUES ('book', 1), ('lamp', 2), ('pen', 10);
