"""Helpers shared by the tests (``tests/``) and the tools (``tools/``), never by the server.

- ``learner``: the tiny real fastai learner the tests and tools export (its pickle refers to
  ``testsupport.learner.tiny_cnn``, importable from the repository root);
- ``uploads``: encoded images, multipart bodies, crafted files (PNG bombs) and posting them;
- ``server``: gunicorn started with the Procfile's command on a free loopback port;
- ``memory``: resident memory of a process tree, from ``/proc``;
- ``browser``: Chromium's flags and the app served on a free port for Playwright.
"""
