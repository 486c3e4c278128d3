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
# numbers of a prediction in it). %(h)s is the WSGI REMOTE_ADDR after the app ran: with
# AGE_TRUSTED_PROXIES set, the visitor's address that ProxyFix read from X-Forwarded-For
# (agegroup/factory.py), the same one the rate limits count.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
# gunicorn itself believes no forwarded header from anyone: the app's ProxyFix alone decides,
# with AGE_TRUSTED_PROXIES hops (gunicorn's default trusts X-Forwarded-Proto from 127.0.0.1).
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}
max_requests = 0
# Headers are small for this app: refuse oversized request lines and header floods early.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190


worker_class = "agegroup.gunicorn_worker.DeadlineWorker"
