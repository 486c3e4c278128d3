"""Turn a face image into the exact square picture the model sees.

Training caches its images through this function and the server calls it before every
prediction, so both sides resize with the same filter to the same size.
"""

from __future__ import annotations

from PIL import Image

# Filter used by both training-data preparation and serving.
RESAMPLE = Image.Resampling.BILINEAR

# ImageNet statistics: fastai's vision_learner normalises with them, and so does the lean runtime.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_model_input(image: Image.Image, size: int) -> Image.Image:
    """Return ``image`` as an RGB picture of ``size`` x ``size`` pixels (squished, not cropped).

    UTKFace crops are already square, so squishing keeps their framing; the face cropper makes
    square crops for real photos too.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        # reducing_gap makes large inputs fast: Pillow first shrinks by an integer factor.
        image = image.resize((size, size), RESAMPLE, reducing_gap=3.0)
    return image
