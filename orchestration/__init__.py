"""Muster: the Django project package (settings, urls, accounts, audit)."""

from orchestration.celery import app as celery_app

__all__ = ["celery_app"]
