"""Settings of the test project: PostgreSQL from $DJMASTER_DATABASE_URL, the contrib app,
the admin, and the django.tasks backend (Django 6's django.tasks or the backport)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "djproject.urls"

# Django >= 6 has django.tasks; older ones use the django-tasks backport, which is an app.
BACKPORT = importlib.util.find_spec("django.tasks") is None
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    *(["django_tasks"] if BACKPORT else []),
    "circus_djmaster.contrib.django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
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

_params = conninfo_to_dict(os.environ["DJMASTER_DATABASE_URL"])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params.pop("dbname", ""),
        "USER": _params.pop("user", ""),
        "PASSWORD": _params.pop("password", ""),
        "HOST": _params.pop("host", ""),
        "PORT": _params.pop("port", ""),
        "OPTIONS": _params,
    }
}

TASKS = {
    "default": {
        "BACKEND": "circus_djmaster.contrib.django.tasks.DjmasterBackend",
        "QUEUES": ["default", "tasks"],
        "OPTIONS": {"DATABASE": "default"},
    }
}

# The djmaster settings file of `manage.py djmaster ...` (the tests write it here).
DJMASTER = BASE_DIR / "djmaster.toml"
