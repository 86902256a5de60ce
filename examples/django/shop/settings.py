"""Settings of the shop example: one database, read from $DJMASTER_DATABASE_URL.

Django and the delayed_jobs table share the database, so a view can enqueue a task in
the same transaction as its own writes (see orders/views.py). The circus-djmaster app
creates the table (manage.py migrate), adds `manage.py djmaster` and the admin's
"Delayed jobs"; TASKS makes it the backend of Django's task API.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from psycopg.conninfo import conninfo_to_dict

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

# Django >= 6 has django.tasks; before that the django-tasks backport is an app.
TASKS_BACKPORT = importlib.util.find_spec("django.tasks") is None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    *(["django_tasks"] if TASKS_BACKPORT else []),
    "circus_djmaster.contrib.django",
    "orders",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "shop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

STATIC_URL = "static/"

# Django's task API, run by circus-djmaster workers; jobs are written on "default".
TASKS = {
    "default": {
        "BACKEND": "circus_djmaster.contrib.django.tasks.DjmasterBackend",
        "QUEUES": ["orders"],
        "OPTIONS": {"DATABASE": "default"},
    }
}
# The settings file of `manage.py djmaster ...`.
DJMASTER = BASE_DIR / "djmaster.toml"

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
