"""The pinned driver uses its C extension here, as it must on Amazon Linux 2023."""

import mysql.connector
from mysql.connector.connection_cext import CMySQLConnection


def test_c_extension_loads():
    assert mysql.connector.HAVE_CEXT, "mysql-connector-python fell back to pure Python"


def test_pool_connections_use_the_c_extension(app):
    with app.app_context():
        lease = app.extensions["database"].borrow()
        try:
            assert isinstance(lease.connection, CMySQLConnection)
        finally:
            lease.release()
