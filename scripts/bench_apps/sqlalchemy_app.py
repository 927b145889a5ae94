"""Reference: a typical SQLAlchemy engine app, for scripts/bench only."""

import os

from flask import Flask, jsonify
from sqlalchemy import create_engine, text

app = Flask(__name__)
engine = create_engine(
    "mysql+mysqlconnector://{u}:{p}@{h}:{port}/{db}".format(
        u=os.environ["RDS_USERNAME"], p=os.environ["RDS_PASSWORD"], h=os.environ["RDS_HOSTNAME"],
        port=os.environ["RDS_PORT"], db=os.environ["RDS_DB_NAME"]))
QUERY = text("SELECT id, email, name, created_at, updated_at FROM users ORDER BY id LIMIT 20")


@app.get("/api/users")
def list_users():
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(QUERY).mappings()]
    return jsonify(data=rows)


application = app
