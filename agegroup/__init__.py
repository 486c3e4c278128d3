"""Age-group detector: the runtime that predicts the age group of the faces in a photo.

Importing the package loads nothing heavy: the Flask app factory is ``agegroup.factory``, the
runtimes are ``agegroup.predictor`` (fastai) and ``agegroup.onnx_runtime`` (the lean twin), and
the gunicorn worker class is ``agegroup.gunicorn_worker``. Training lives in
``agegroup.training``; benchmarks and other build-time tools in the top-level ``tools`` package.
"""
