"""Reference: the usual tutorial pattern, for scripts/bench only.

A MySQLConnectionPool(pool_size=5) built at import and get_connection() per request:
get_connection() raises "pool exhausted" at once when six threads want a connection.
"""

import os

import mysql.connector.pooling
from flask import Flask, jsonify

app = Flask(__name__)
pool = mysql.connector.pooling.MySQLConnectionPool(
    pool_name="tutorial", pool_size=5, host=os.environ["RDS_HOSTNAME"],
    port=int(os.environ["RDS_PORT"]), user=os.environ["RDS_USERNAME"],
    password=os.environ["RDS_PASSWORD"], database=os.environ["RDS_DB_NAME"])


@app.get("/api/users")
def list_users():
    conn = pool.get_connection()
    try:
        cursor = conn.cursor(dictionary=True)
        cursor.execute("SELECT id, email, name, created_at, updated_at FROM users ORDER BY id LIMIT 20")
        rows = cursor.fetchall()
        cursor.close()
    finally:
        conn.close()
    return jsonify(data=rows)


application = app
