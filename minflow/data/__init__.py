"""Data for the course: the bundled photos and both tasks' training and test inputs.

- `minflow.data.images`: the photos (`load_photo`), training crops, the SR degradations
  (`bicubic_down`, blur, noise, JPEG, ...), the SR OOD inputs (`ood_sets`) and DIV2K.
- `minflow.data.folders`: training crops streamed from any folder of images (`FolderCrops`).
- `minflow.data.lowlight`: synthetic dark captures (`darken`), paired crops, the low-light OOD
  test pairs (`lowlight_ood_sets`) and LOL.

Everything is importable from here (``data.load_photo``, ``data.darken``). Images are float
tensors in [0, 1], (3, H, W) or (N, 3, H, W); inputs are checked by `utils.check_image`.
"""

from .folders import IMAGE_SUFFIXES, FolderCrops, StepBatches, image_files
from .images import (
    DIV2K_URLS,
    OOD_GROUPS,
    OTHER_IMAGES,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    VAL_PHOTOS,
    CropDataset,
    OODInput,
    _load_array,  # noqa: F401  (cached loader, cleared by the tests)
    _require,  # noqa: F401  (the optional-dependency check, tested)
    add_noise,
    bicubic_down,
    bicubic_up,
    blur_down,
    box_kernel,
    center_crop,
    check_size,
    contrast,
    fit_square,
    gamma,
    gaussian_kernel,
    invert,
    jpeg,
    load_div2k,
    load_photo,
    load_photos,
    mod_crop,
    motion_kernel,
    nearest_down,
    ood_sets,
    photo_names,
    random_crops,
    synthetic_patterns,
    to_tensor,
)
from .lowlight import (
    DARKEN_RANGES,
    LL_GROUPS,
    LOL_PAGE,
    LOL_URL,
    OOD_DARKEN,
    LowLightInput,
    LowLightPairs,
    darken,
    darken_ranges,
    load_lol,
    lowlight_ood_sets,
    paired_crops,
)

__all__ = [
    "DARKEN_RANGES",
    "DIV2K_URLS",
    "IMAGE_SUFFIXES",
    "LL_GROUPS",
    "LOL_PAGE",
    "LOL_URL",
    "OOD_DARKEN",
    "OOD_GROUPS",
    "OTHER_IMAGES",
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "VAL_PHOTOS",
    "CropDataset",
    "FolderCrops",
    "LowLightInput",
    "LowLightPairs",
    "OODInput",
    "StepBatches",
    "add_noise",
    "bicubic_down",
    "bicubic_up",
    "blur_down",
    "box_kernel",
    "center_crop",
    "check_size",
    "contrast",
    "darken",
    "darken_ranges",
    "fit_square",
    "gamma",
    "gaussian_kernel",
    "image_files",
    "invert",
    "jpeg",
    "load_div2k",
    "load_lol",
    "load_photo",
    "load_photos",
    "lowlight_ood_sets",
    "mod_crop",
    "motion_kernel",
    "nearest_down",
    "ood_sets",
    "paired_crops",
    "photo_names",
    "random_crops",
    "synthetic_patterns",
    "to_tensor",
]
