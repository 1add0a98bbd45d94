"""Real data sets for private training: bundled, packaged or downloaded with checksums, never faked.

Host side (NumPy and file I/O). A consumer of the mechanism: nothing in the core
`dpjax` namespace imports it.

* `digits`: scikit-learn's 1,797 real 8x8 handwritten digits (bundled).
* `fashion-mnist`: looked up in `$DPJAX_DATA_DIR`, Debian's `dataset-fashion-mnist`
  (`/usr/share/datasets/fashion-mnist`), `~/.cache/dpjax/fashion-mnist`, else downloaded
  with checksums when a network exists.
* `synthetic`: labelled SYNTHETIC everywhere it appears.
"""

from dpjax.data._datasets import DATASET_NAMES as DATASET_NAMES
from dpjax.data._datasets import Dataset as Dataset
from dpjax.data._datasets import Split as Split
from dpjax.data._datasets import load_dataset as load_dataset
from dpjax.data._datasets import load_idx as load_idx
