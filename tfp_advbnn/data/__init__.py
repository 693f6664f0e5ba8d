"""Input pipelines: CIFAR-10, STL-10 and image folders as deterministic `tf.data` datasets.

Every pipeline yields `(images, labels)` batches: images float32 [B, H, W, 3] with pixel values in
[0, 1], labels int32 [B] in [0, num_classes).

Sources:
- `cifar10`: a local copy in the official binary or python layout (pickles read through
  `safe_pickle`), as a directory or as the official `.tar.gz`; without local files through
  `tfds` (tensorflow-datasets), which downloads and prepares it on first use unless
  `download=False`.
- `stl10`: the official `stl10_binary/` files (`stl10`); without them through `tfds`, as
  CIFAR-10.
- `folder`: `root/train/<class>/*.png|jpg|jpeg` and `root/val/<class>/...` (ImageNet-143 and
  custom data), decoded lazily in the pipeline and resized to `image_size`.

`augment` holds the training augmentation, `pipeline` the `tf.data` pipelines (`DataSpec`,
`ImageData`), and `registry` the table from data set name to loader, `DATASETS` and `load_data`.
"""

from tfp_advbnn.data.cifar10 import load_cifar10_arrays
from tfp_advbnn.data.folder import IMAGE_EXTENSIONS
from tfp_advbnn.data.pipeline import DataSpec, ImageData
from tfp_advbnn.data.registry import DATASETS, load_data
from tfp_advbnn.data.safe_pickle import UnsafePickleError
from tfp_advbnn.data.stl10 import load_stl10_arrays
from tfp_advbnn.data.tfds import DownloadUnavailableError

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "DataSpec",
    "DownloadUnavailableError",
    "ImageData",
    "UnsafePickleError",
    "load_cifar10_arrays",
    "load_data",
    "load_stl10_arrays",
]
