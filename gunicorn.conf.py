"""Gunicorn settings (read automatically by `gunicorn`); each can be overridden by env vars.

One worker process holds one copy of the model (the memory budget on Render's free tier is
512 MB); a few threads let it serve slow uploads and predictions at the same time.

Slow clients: the worker class (``agegroup.gunicorn_worker.DeadlineWorker``) closes a
connection still sending its request ``GUNICORN_REQUEST_DEADLINE`` seconds after it started;
see that module.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# Restart a worker whose main loop stops answering (a hung C extension), not a slow request.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 20
keepalive = 5
# The model is loaded in each worker after the fork (preloading torch before fork can hang).
preload_app = False
# Method and path only: never the upload, nor the query string (a result link carries the
# numbers of a prediction in it).
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
max_requests = 0
# Headers are small for this app: refuse oversized request lines and header floods early.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190


worker_class = "agegroup.gunicorn_worker.DeadlineWorker"
