"""Environment properties as Beanstalk users really set them.

tests/test_config.py holds the rules themselves; this file, what operators produce.
"""

from __future__ import annotations

import pytest

from app import create_app
from app.config import ConfigError

BASE = {"RDS_HOSTNAME": "db.example.internal", "RDS_DB_NAME": "ebdb",
        "RDS_USERNAME": "app", "RDS_PASSWORD": "s3cret-canary"}


def test_a_bad_log_level_does_not_hide_the_other_bad_variables():
    """Before: create_app checked LOG_LEVEL first and stopped there: the message named it
    alone, and the next deployment found the next variable."""
    with pytest.raises(ConfigError) as err:
        create_app({**BASE, "LOG_LEVEL": "verbose", "RDS_PORT": "abc"})
    assert "\n  LOG_LEVEL: is not a log level (got 'verbose')" in str(err.value)
    assert "\n  RDS_PORT: " in str(err.value)
