"""System checks of Muster's own: its middleware in place of Django's, and no development key in production.

Django's security.W001-W003 look for Django's own middleware class paths; Muster installs
subclasses of them (orchestration/middleware.py), so those warnings are silenced in
settings and these checks look for the subclasses instead. W009 passes the development key
(it is long and varied): E001 here names it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.middleware import clickjacking, csp, csrf, security
from django.utils.module_loading import import_string

REQUIRED_MIDDLEWARE = [
    ("muster.W001", security.SecurityMiddleware, "HSTS, the SSL redirect and the other security headers"),
    ("muster.W002", clickjacking.XFrameOptionsMiddleware, "X-Frame-Options (clickjacking)"),
    ("muster.W003", csrf.CsrfViewMiddleware, "CSRF protection"),
    ("muster.W004", csp.ContentSecurityPolicyMiddleware, "the Content-Security-Policy"),
]


@register(Tags.security, deploy=True)
def security_middleware(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Each of Django's security middleware, or a subclass of it, is installed."""
    installed = [import_string(path) for path in settings.MIDDLEWARE]
    return [
        Warning(f"no {base.__module__}.{base.__name__} (or a subclass) in MIDDLEWARE: {what} is off", id=check_id)
        for check_id, base, what in REQUIRED_MIDDLEWARE
        if not any(isinstance(cls, type) and issubclass(cls, base) for cls in installed)
    ]


@register(Tags.security, deploy=True)
def development_secret_key(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The development SECRET_KEY is public (it is in the repository)."""
    if settings.SECRET_KEY == settings.DEV_SECRET_KEY:
        return [
            Error(
                "SECRET_KEY is the development key from the repository",
                hint="python3 -c 'import secrets; print(secrets.token_urlsafe(50))' and set SECRET_KEY",
                id="muster.E001",
            )
        ]
    return []
