"""Gunicorn settings (read automatically by `gunicorn`); each can be overridden by env vars.

One worker process holds one copy of the model (the memory budget on Render's free tier is
512 MB); a few threads let it serve a slow upload and a prediction at the same time.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# A slow client holds only a thread; the timeout ends a request that takes longer in total.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 20
keepalive = 5
# The model is loaded in each worker after the fork (preloading torch before fork can hang).
preload_app = False
# Request line only: never the upload itself.
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
max_requests = 0
