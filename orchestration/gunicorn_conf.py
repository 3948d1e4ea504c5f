"""The production server's gunicorn settings.

    gunicorn -c python:orchestration.gunicorn_conf orchestration.asgi:application -w 4 -b 0.0.0.0:8000

Keep-alive outlives an agent's report interval. With gunicorn's default (2 s) every agent's
connection closed between two reports (5 s apart), so every report paid a new TCP
connection; with 1,000 agents the reconnections alone kept the report p99 in seconds long
after a start (bench/fleet.py, docs/BENCHMARKS.md). A command-line flag overrides either.
"""

worker_class = "uvicorn.workers.UvicornWorker"
# Seconds an idle keep-alive connection stays open: above the agents' 5 s report interval and
# below the usual 60 s idle timeout of a load balancer in front (it should close first, not us).
keepalive = 50
