"""Settings shared by every environment. Values that differ per deployment come from the environment."""

import os
from importlib.util import find_spec
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    return env(name, str(default)).lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in (env(name, default) or "").split(",") if item.strip()]


SECRET_KEY = env("SECRET_KEY", "insecure-dev-key-change-me-in-production-0123456789abcdef")
DEBUG = False
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "apps.core",
    "apps.registry",
    "apps.accounting",
    "apps.deployments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.core.middleware.RequestContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "apps.core.middleware.ApiErrorMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.core.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env("DATABASE_URL", "postgres://controlplane@127.0.0.1:5432/controlplane"), conn_max_age=60
    )
}
if env_bool("DATABASE_POOL"):
    # Set by controlplane/asgi.py: the ASGI server runs each request's sync code in a thread of its own, so a
    # persistent connection dies with its request and every request would start a PostgreSQL session (a server
    # process with cold caches). A pool keeps sessions across requests; pooled connections are not persistent ones.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": int(env("DATABASE_POOL_MAX_SIZE", "20")),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")

CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
# channels_redis blocks on Redis for up to 5 s per receive; redis-py's default 5 s socket timeout would cut those
# reads and crash idle websockets, so the channel layer gets a longer one.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
    },
}
SESSION_ENGINE = "django.contrib.sessions.backends.db"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Failed logins counted per username and, separately, per client address; past the limit, logins are refused
# for the rest of the window.
LOGIN_RATE_LIMIT = {"attempts": int(env("LOGIN_RATE_LIMIT_ATTEMPTS", "5")), "window_seconds": 900}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".devstack" / "staticfiles"
# Third-party JS comes from packages: the charting library is the plotly wheel's bundled plotly.js.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/plotly", Path(find_spec("plotly").origin).parent / "package_data"),
]

# Request bodies: the API caps JSON bodies; large artifacts use the chunked upload protocol.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 2000

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.core.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["apps.core.api.permissions.IsAuthenticatedWithScope"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.api.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "apps.core.api.ordering.OrderingFilter",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["apps.core.api.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLMOps control plane API",
    "DESCRIPTION": "Registry, experiments, features, deployments, gateway, accounting and monitoring.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI assets come from the drf-spectacular-sidecar package, not a CDN: works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "apps.core.models.JobStatus",
        "VersionStatusEnum": "apps.registry.models.VersionStatus",
        "UploadStatusEnum": "apps.registry.models.UploadStatus",
        "PromotionStatusEnum": "apps.registry.models.PromotionStatus",
        "ModelTaskEnum": "apps.registry.models.Task",
        "RuntimeTaskEnum": "apps.deployments.spec.RUNTIME_TASKS",
    },
}

# Celery: queue names and routes live in controlplane/celery.py.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = int(env("CELERY_TASK_SOFT_TIME_LIMIT", "3300"))
CELERY_TASK_TIME_LIMIT = int(env("CELERY_TASK_TIME_LIMIT", "3600"))
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 300}

# Workers send a heartbeat this often; one unseen for WORKER_STALE_SECONDS counts as gone.
WORKER_HEARTBEAT_SECONDS = int(env("WORKER_HEARTBEAT_SECONDS", "10"))
WORKER_STALE_SECONDS = int(env("WORKER_STALE_SECONDS", "45"))

# A queued job whose message no worker claimed for this long is sent again (e.g. after a broker restart).
JOB_REDISPATCH_SECONDS = int(env("JOB_REDISPATCH_SECONDS", "900"))

# Key for secrets encrypted at rest (a Fernet key or any passphrase); defaults to one derived from SECRET_KEY.
ENCRYPTION_KEY = env("CONTROLPLANE_ENCRYPTION_KEY")

# Model artifacts: a content-addressed chunk store. `file:///path` or `s3://bucket/prefix` (+ AWS_* variables).
ARTIFACT_STORE_URL = env("ARTIFACT_STORE_URL", f"file://{BASE_DIR / '.devstack' / 'artifacts'}")
# Upload parts are this size (the last part of a file may be smaller); clients may upload them in parallel.
UPLOAD_PART_SIZE = int(env("UPLOAD_PART_SIZE", str(64 * 1024 * 1024)))
UPLOAD_EXPIRY_HOURS = int(env("UPLOAD_EXPIRY_HOURS", "48"))
# Soft-deleted versions keep their bytes this long before garbage collection frees unreferenced chunks.
VERSION_RETENTION_DAYS = int(env("VERSION_RETENTION_DAYS", "7"))
# Aliases only maintainers may move; with approval on, a second maintainer must approve the move.
PROTECTED_ALIASES = env_list("PROTECTED_ALIASES", "production")
PROTECTED_ALIAS_APPROVAL = env_bool("PROTECTED_ALIAS_APPROVAL", False)
# Server-side directories that `POST /api/v1/registry/imports/` may read `file://` sources from (comma-separated,
# symlinks resolved). Empty disables directory imports.
REGISTRY_IMPORT_ROOTS = env_list("REGISTRY_IMPORT_ROOTS", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Accounting: raw usage events older than this are pruned (the hourly/daily rollups stay).
ACCOUNTING_RAW_RETENTION_DAYS = int(env("ACCOUNTING_RAW_RETENTION_DAYS", "90"))
# Accounting: most usage events one ingestion request may carry.
ACCOUNTING_MAX_BATCH = int(env("ACCOUNTING_MAX_BATCH", "1000"))
# Budget alerts go out by e-mail through this backend (console by default) from this sender.
EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "controlplane@localhost")

# Deployments: where local replicas keep their model files and logs; the address other hosts reach them at.
RUNTIME_DIR = Path(env("RUNTIME_DIR", str(BASE_DIR / ".devstack" / "runtime")))
RUNTIME_ADVERTISE_HOST = env("RUNTIME_ADVERTISE_HOST", "127.0.0.1")
# A replica not ready this long after it started is restarted; after this many failed starts in a row it fails.
RUNTIME_START_TIMEOUT_SECONDS = int(env("RUNTIME_START_TIMEOUT_SECONDS", "300"))
RUNTIME_MAX_FAILED_STARTS = int(env("RUNTIME_MAX_FAILED_STARTS", "3"))
# Restart backoff after a crash: base × 2^(restarts-1), capped.
RUNTIME_BACKOFF_SECONDS = float(env("RUNTIME_BACKOFF_SECONDS", "2"))
RUNTIME_BACKOFF_MAX_SECONDS = float(env("RUNTIME_BACKOFF_MAX_SECONDS", "60"))
# How often each GPU worker's supervisor checks its replicas.
RUNTIME_SUPERVISE_SECONDS = float(env("RUNTIME_SUPERVISE_SECONDS", "1"))
# A revision that lost its traffic keeps serving in-flight requests this long before its replicas stop.
DEPLOYMENT_DRAIN_SECONDS = int(env("DEPLOYMENT_DRAIN_SECONDS", "10"))

# Gateway: how long a request waits for a scaled-to-zero deployment to start, and how stale its routing may be.
GATEWAY_COLD_START_SECONDS = float(env("GATEWAY_COLD_START_SECONDS", "120"))
GATEWAY_ROUTE_TTL_SECONDS = float(env("GATEWAY_ROUTE_TTL_SECONDS", "1"))
GATEWAY_AUTH_TTL_SECONDS = float(env("GATEWAY_AUTH_TTL_SECONDS", "5"))
GATEWAY_UPSTREAM_TIMEOUT_SECONDS = float(env("GATEWAY_UPSTREAM_TIMEOUT_SECONDS", "600"))
GATEWAY_MAX_BODY_BYTES = int(env("GATEWAY_MAX_BODY_BYTES", str(8 * 1024 * 1024)))
# Checks that may refuse a request before it is sent (budgets, rate limits): dotted paths of classes with an async
# check(ctx) and an optional settle(ctx, usage).
GATEWAY_GUARDS = env_list("GATEWAY_GUARDS", "apps.accounting.guards.BudgetGuard,apps.accounting.guards.RateLimitGuard")
# How long the gateway trusts a budget verdict for one caller before reading the spend again.
GATEWAY_BUDGET_CHECK_SECONDS = float(env("GATEWAY_BUDGET_CHECK_SECONDS", "5"))
# Usage records go to this Redis stream; a worker consumes them in batches.
GATEWAY_USAGE_STREAM = env("GATEWAY_USAGE_STREAM", "gateway:usage")
# Records a consumer read but did not acknowledge for this long (it died) are claimed by another consumer.
USAGE_STREAM_CLAIM_IDLE_MS = int(env("USAGE_STREAM_CLAIM_IDLE_MS", "30000"))
# Kubernetes: the storageUri of a version that was not imported from hf:// or s3:// (a volume you fill with cpctl).
MODEL_STORAGE_URI_TEMPLATE = env("MODEL_STORAGE_URI_TEMPLATE", "pvc://controlplane-models/{project}/{model}/{version}")
