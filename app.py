"""Entry point: ``gunicorn app:app`` in production, ``python app.py`` for a local run."""

import logging
import os

from agegroup.factory import create_app

logging.basicConfig(
    level=os.environ.get("LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
)
app = create_app()

if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
