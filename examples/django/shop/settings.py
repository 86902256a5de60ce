"""Settings of the shop example: one database, read from $DJMASTER_DATABASE_URL.

Django and the delayed_jobs table share the database, so a view can enqueue a job in
the same transaction as its own writes (see orders/views.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from psycopg.conninfo import conninfo_to_dict

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = ["orders"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "shop.urls"

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def database_from_url(url: str) -> dict[str, object]:
    """Django's DATABASES entry for a libpq URL or "key=value" string.

    psycopg parses it, so URLs such as ``postgresql://postgres:@/postgres?host=/socket/dir``
    (what ``djmaster devdb start`` gives) work; libpq keys Django has no name for (sslmode,
    application_name...) are passed on as OPTIONS.
    """
    params = conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,
    }


_url = os.environ.get("DJMASTER_DATABASE_URL")
if not _url:
    raise ImproperlyConfigured(
        'DJMASTER_DATABASE_URL is not set: run `eval "$(djmaster devdb start)"` '
        "or export the URL of your PostgreSQL database"
    )
DATABASES = {"default": database_from_url(_url)}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
