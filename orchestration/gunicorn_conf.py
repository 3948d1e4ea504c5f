"""The production server's gunicorn settings.

    gunicorn -c python:orchestration.gunicorn_conf orchestration.asgi:application -w 4 -b 0.0.0.0:8000

Keep-alive outlives an agent's report interval. With gunicorn's default (2 s) every agent's
connection closed between two reports (5 s apart), so every report paid a new TCP
connection; with 1,000 agents the reconnections alone kept the report p99 in seconds long
after a start (bench/fleet.py, docs/BENCHMARKS.md). A command-line flag overrides either.
"""

import os

worker_class = "uvicorn.workers.UvicornWorker"
# X-Forwarded-For and X-Forwarded-Proto are believed only from these addresses (comma-separated
# IPs or networks): the proxy in front. gunicorn's default trusts 127.0.0.1, so any process on
# the host could choose the address the login throttle counts; none unless configured.
forwarded_allow_ips = os.environ.get("TRUSTED_PROXIES", "").strip()
# Seconds an idle keep-alive connection stays open: above the agents' 5 s report interval and
# below the usual 60 s idle timeout of a load balancer in front (it should close first, not us).
keepalive = 50
