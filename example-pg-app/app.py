"""An orders service on PostgreSQL: a stdlib HTTP server and psycopg2, its schema made at start."""

import contextlib
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@db:5432/shop")
SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item text NOT NULL,
    quantity int NOT NULL DEFAULT 1 CHECK (quantity > 0)
)
"""


@contextlib.contextmanager
def transaction():
    """A cursor in a transaction, on a connection of its own: one that a restore ended is never reused."""
    db = psycopg2.connect(DATABASE_URL)
    try:
        with db, db.cursor() as cur:
            yield cur
    finally:
        db.close()


def migrate():
    """Create the database and its table if missing (the server may still be starting)."""
    server, _, name = DATABASE_URL.rpartition("/")
    for _ in range(60):
        try:
            admin = psycopg2.connect(f"{server}/postgres")
            break
        except psycopg2.OperationalError:
            time.sleep(0.5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    with transaction() as cur:
        cur.execute(SCHEMA)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            with transaction() as cur:
                cur.execute("SELECT 1")
            self.reply(200, {"status": "ok"})
        elif self.path == "/orders":
            with transaction() as cur:
                cur.execute("SELECT id, item, quantity FROM orders ORDER BY id")
                rows = [{"id": i, "item": item, "quantity": q} for i, item, q in cur.fetchall()]
            self.reply(200, rows)
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/orders":
            return self.reply(404, {"error": "not found"})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        try:
            with transaction() as cur:
                cur.execute(
                    "INSERT INTO orders (item, quantity) VALUES (%s, %s) RETURNING id",
                    (body.get("item"), body.get("quantity", 1)),
                )
                (order_id,) = cur.fetchone()
        except psycopg2.IntegrityError as exc:
            return self.reply(400, {"error": exc.pgerror})
        self.reply(201, {"id": order_id})

    def do_DELETE(self):
        if self.path != "/orders":
            return self.reply(404, {"error": "not found"})
        with transaction() as cur:
            cur.execute("DELETE FROM orders")
        self.reply(204, None)

    def reply(self, code, body):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    migrate()
    ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
