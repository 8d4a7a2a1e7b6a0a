"""``mnist``, ``svhn``, ``cifar10``, ``cifar100``: the full datasets, in torchvision's on-disk layout under ``root``.

Each loader returns the whole dataset as float32 tensors in [0, 1], NCHW, labels int64 (SVHN's label 10 for the
digit 0 becomes 0, as torchvision does). Normalisation is *not* applied here: the per-channel mean/std in the
``DatasetInfo`` are applied inside the model, so ε stays in pixel units.

Files (relative to ``root``; the same places torchvision uses, so a torchvision download can be reused):

- ``mnist``:    ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed idx), read by
  ``torchvision.datasets.MNIST`` after a header check here.
- ``cifar10``:  ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` (pickled dicts: ``data`` uint8 (N, 3072),
  ``labels``).
- ``cifar100``: ``cifar-100-python/train``, ``test`` (pickled dicts: ``data``, ``fine_labels``). CIFAR pickles are
  read by an allow-list unpickler (dicts, lists, numpy arrays; nothing else is imported), so a tampered file is
  refused as corrupt instead of running code.
- ``svhn``:     ``train_32x32.mat``, ``test_32x32.mat`` (MATLAB: ``X`` uint8 (32, 32, 3, N), ``y`` (N, 1) in 1..10).

Each format's writer sits beside its reader (``_write_mnist`` ...): the dataset's ``TinyFormat`` uses it to write the
tiny stand-ins of ``robust_core.data.tiny``, and tests use it to write exact small files.

CIFAR and SVHN are read here, not through torchvision's dataset classes: those verify the MD5 of every file on each
read (slow for real files, and it rules out small test files). torchvision is used only to *download* missing files
when ``download`` is true. When files are missing and cannot be fetched, ``DataMissingError`` names every expected
file, the folder searched and the fixes; a file that exists but cannot be parsed raises ``CorruptDataError`` naming
the file.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.error import URLError

import numpy as np
import torch

from robust_core.data.base import Arrays, DataMissingError, DatasetInfo, EvalDefaults, Source, TinyFormat
from robust_core.errors import InputError
from robust_core.registry import DATASETS


class CorruptDataError(InputError, ValueError):
    """A dataset file exists but is truncated or not in the expected format; the message names the file."""


@dataclass(frozen=True)
class _Layout:
    """Where one dataset's files live and how to get them."""

    title: str  # human name used in messages
    folder: str  # relative to root
    train: tuple[str, ...]
    test: tuple[str, ...]
    origin: str  # how a person gets the files by hand

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test


# ------------------------------------------------------------------------------------------------ finding files
def _missing_message(name: str, layout: _Layout, folder: Path, missing: list[str], reason: str) -> str:
    listing = "\n".join(f"  {folder / f}{'   <- missing' if f in missing else ''}" for f in layout.files)
    return (
        f"dataset {name!r} ({layout.title}): {len(missing)} of {len(layout.files)} expected files are missing "
        f"in {folder}\nexpected files:\n{listing}\n{reason}\n"
        f"fix: put the files there ({layout.origin}), or set data.root to the folder that holds them "
        f"(files are looked for under <data.root>/{layout.folder or '.'}), or allow the download with "
        f"data.download=true on a machine with internet access"
    )


def _ensure_files(name: str, layout: _Layout, root: Path, download: bool, fetch: Callable[[Path], None]) -> Path:
    """Return the folder holding every file of ``layout``, downloading with ``fetch(root)`` when allowed."""
    root = Path(root).expanduser().resolve()
    folder = root / layout.folder
    missing = [f for f in layout.files if not (folder / f).is_file()]
    if not missing:
        return folder
    if not download:
        reason = "download is off (data.download=false)."
        raise DataMissingError(_missing_message(name, layout, folder, missing, reason))
    try:
        fetch(root)
    # Only what a failed download raises: network errors (URLError is an OSError), disk errors, and torchvision's
    # RuntimeError (MNIST mirrors exhausted, MD5 mismatch of a partial download). Anything else propagates.
    except (URLError, OSError, RuntimeError) as e:
        reason = f"the download failed: {type(e).__name__}: {str(e).strip() or repr(e)}"
        raise DataMissingError(_missing_message(name, layout, folder, missing, reason)) from e
    missing = [f for f in layout.files if not (folder / f).is_file()]
    if missing:
        raise DataMissingError(
            _missing_message(name, layout, folder, missing, "the download finished but these files are still absent.")
        )
    return folder


def _corrupt(path: Path, what: str) -> CorruptDataError:
    return CorruptDataError(
        f"{path}: {what}. The file is truncated or not in the expected format; delete it and download again "
        f"(data.download=true), or replace it with the original file"
    )


def _to_unit(x: np.ndarray) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (exactly ``value / 255`` in float32)."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)


def _labels(y: np.ndarray, path: Path, num_classes: int, n: int) -> torch.Tensor:
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise _corrupt(path, f"{len(y)} labels for {n} images")
    if not np.issubdtype(y.dtype, np.integer):
        raise _corrupt(path, f"labels have dtype {y.dtype}, expected integers")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise _corrupt(path, f"labels span {y.min()}..{y.max()}, expected 0..{num_classes - 1}")
    return torch.from_numpy(y.astype(np.int64))


# ------------------------------------------------------------------------------------------------------- MNIST
_MNIST = _Layout(
    "MNIST",
    "MNIST/raw",
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "the four uncompressed idx files: gunzip the *-ubyte.gz files from https://ossci-datasets.s3.amazonaws.com/mnist/",
)
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # big-endian magic numbers: uint8 data, 3 or 1 dimensions


def _idx_count(path: Path, magic: int, item_shape: tuple[int, ...]) -> int:
    """Check an idx file's header and length (torchvision only asserts); return the number of items."""
    nd = 1 + len(item_shape)
    head_len = 4 * (1 + nd)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(head_len)
    if len(head) < head_len:
        raise _corrupt(path, f"{size} bytes, shorter than the {head_len}-byte idx header")
    got_magic, *dims = struct.unpack(f">{1 + nd}I", head)
    if got_magic != magic:
        raise _corrupt(path, f"idx magic number {got_magic}, expected {magic}")
    if tuple(dims[1:]) != item_shape:
        raise _corrupt(path, f"items of shape {tuple(dims[1:])}, expected {item_shape}")
    want = head_len + int(np.prod(dims))
    if size != want:
        raise _corrupt(path, f"{size} bytes, the header promises {want}")
    return dims[0]


def write_idx(path: Path, magic: int, a: np.ndarray) -> None:
    """An idx file: big-endian magic number and dimensions, then the uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(f">{1 + a.ndim}I", magic, *a.shape) + a.astype(np.uint8).tobytes())


def _write_mnist(root: Path, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> None:
    raw = root / _MNIST.folder
    for (img, lab), x, y in ((_MNIST.train, x_tr, y_tr), (_MNIST.test, x_te, y_te)):
        write_idx(raw / img, _IDX_IMAGES, x[:, 0])
        write_idx(raw / lab, _IDX_LABELS, y)


def _fetch_mnist(root: Path) -> None:
    from torchvision.datasets import MNIST

    MNIST(root, train=True, download=True)  # fetches and unpacks all four files into root/MNIST/raw


def load_mnist(root: Path, download: bool) -> Arrays:
    from torchvision.datasets import MNIST

    folder = _ensure_files("mnist", _MNIST, root, download, _fetch_mnist)
    out = []
    for train, (img, lab) in ((True, _MNIST.train), (False, _MNIST.test)):
        n = _idx_count(folder / img, _IDX_IMAGES, (28, 28))
        m = _idx_count(folder / lab, _IDX_LABELS, ())
        if n != m:
            raise _corrupt(folder / lab, f"{m} labels for the {n} images in {img}")
        ds = MNIST(folder.parent.parent, train=train, download=False)  # reads root/MNIST/raw/*-ubyte
        y = _labels(ds.targets.numpy(), folder / lab, 10, n)
        out += [_to_unit(ds.data.numpy()).unsqueeze(1), y]
    return Arrays(*out)


# ------------------------------------------------------------------------------------------------------- CIFAR
_CIFAR10 = _Layout(
    "CIFAR-10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into data.root",
)
_CIFAR100 = _Layout(
    "CIFAR-100",
    "cifar-100-python",
    ("train",),
    ("test",),
    "unpack cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into data.root",
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only. CIFAR's official files are pickles (the one pickle format a
    dataset here needs); this allow-list bounds what reading one can do to rebuilding arrays: any other global (e.g.
    ``os.system`` in a tampered file) is refused before it is imported, so a dataset file cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
               *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: CIFAR batches hold only dicts, lists and "
                                         "numpy arrays (a file that asks for more may run code)")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, torch.Tensor]:
    """One pickled batch -> (uint8 images (N, 3, 32, 32), int64 labels (N,)). Read with ``_ArrayUnpickler``."""
    try:
        with open(path, "rb") as f:
            # latin1: the official files are Python 2 pickles holding numpy arrays (as torchvision reads them)
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    # Arbitrary bytes make the unpickler raise almost anything (UnpicklingError, EOFError, ValueError, KeyError,
    # ...); every one means the same thing here, and the original is chained, not hidden.
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, f"cannot be unpickled ({type(e).__name__}: {e})") from e
    if not isinstance(entry, dict):
        raise _corrupt(path, f"holds a {type(entry).__name__}, expected a dict")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    for key in ("data", label_key):
        if key not in entry:
            raise _corrupt(path, f"has no {key!r} entry (keys: {sorted(map(str, entry))})")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _corrupt(path, f"'data' is a {desc}, expected uint8 of shape (N, 3072)")
    # each row: 1024 red, then 1024 green, then 1024 blue values, each a 32x32 image in row-major order -> NCHW
    return data.reshape(-1, 3, 32, 32), _labels(np.asarray(entry[label_key]), path, num_classes, len(data))


def write_pickle(path: Path, d: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(d, f)


def _write_cifar10(root: Path, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> None:
    folder = root / _CIFAR10.folder
    for name, chunk in zip(_CIFAR10.train, np.array_split(np.arange(len(y_tr)), len(_CIFAR10.train))):
        write_pickle(folder / name, {b"batch_label": b"training batch", b"labels": y_tr[chunk].tolist(),
                                     b"data": x_tr[chunk].reshape(len(chunk), -1)})
    write_pickle(folder / _CIFAR10.test[0], {b"labels": y_te.tolist(), b"data": x_te.reshape(len(y_te), -1)})


def _write_cifar100(root: Path, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> None:
    folder = root / _CIFAR100.folder
    for (name,), x, y in ((_CIFAR100.train, x_tr, y_tr), (_CIFAR100.test, x_te, y_te)):
        write_pickle(folder / name, {"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
                                     "data": x.reshape(len(x), -1)})


def _cifar_loader(name: str, layout: _Layout, label_key: str, num_classes: int, tv_class: str):
    def fetch(root: Path) -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, tv_class)(root, train=True, download=True)  # one archive holds both splits

    def load(root: Path, download: bool) -> Arrays:
        folder = _ensure_files(name, layout, root, download, fetch)
        out = []
        for files in (layout.train, layout.test):
            parts = [_read_cifar_batch(folder / f, label_key, num_classes) for f in files]
            # concatenate as uint8, convert once (a float copy of CIFAR's train set is 614 MB)
            out += [_to_unit(np.concatenate([p[0] for p in parts])), torch.cat([p[1] for p in parts])]
        return Arrays(*out)

    load.__name__ = load.__qualname__ = f"load_{name}"
    return load


load_cifar10 = _cifar_loader("cifar10", _CIFAR10, "labels", 10, "CIFAR10")
load_cifar100 = _cifar_loader("cifar100", _CIFAR100, "fine_labels", 100, "CIFAR100")


# -------------------------------------------------------------------------------------------------------- SVHN
_SVHN = _Layout(
    "SVHN (cropped digits)",
    "",
    ("train_32x32.mat",),
    ("test_32x32.mat",),
    "train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/",
)


def _read_svhn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    # scipy raises ValueError, TypeError, OSError, MatReadError, ... on truncated or foreign files; chained below
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, f"cannot be read as a MATLAB file ({type(e).__name__}: {e})") from e
    for key in ("X", "y"):
        if key not in mat:
            raise _corrupt(path, f"has no {key!r} variable")
    x, y = mat["X"], np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise _corrupt(path, f"'X' is a {x.dtype} array of shape {x.shape}, expected uint8 of shape (32, 32, 3, N)")
    n = x.shape[3]
    y = y.reshape(-1)
    if len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise _corrupt(path, f"'y' is a {y.dtype} array of {len(y)} labels, expected {n} integers")
    if n and (y.min() < 1 or y.max() > 10):
        raise _corrupt(path, f"'y' spans {y.min()}..{y.max()}, expected 1..10 (10 is the digit 0)")
    y = np.where(y == 10, 0, y)  # as torchvision: labels in 0..9
    # X[h, w, c, n] -> (n, c, h, w), as torchvision does
    return _to_unit(x.transpose(3, 2, 0, 1)), _labels(y, path, 10, n)


def _write_svhn(root: Path, x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> None:
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    for (name,), x, y in ((_SVHN.train, x_tr, y_tr), (_SVHN.test, x_te, y_te)):
        y_file = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)  # the file stores digit 0 as 10
        scipy.io.savemat(root / name, {"X": x.transpose(2, 3, 1, 0), "y": y_file})


def _fetch_svhn(root: Path) -> None:
    from torchvision.datasets import SVHN

    for split in ("train", "test"):
        if not (root / f"{split}_32x32.mat").is_file():
            SVHN(root, split=split, download=True)


def load_svhn(root: Path, download: bool) -> Arrays:
    folder = _ensure_files("svhn", _SVHN, root, download, _fetch_svhn)
    (x_tr, y_tr), (x_te, y_te) = (_read_svhn(folder / f) for f in _SVHN.files)
    return Arrays(x_tr, y_tr, x_te, y_te)


# ---------------------------------------------------------------------------------------------------- register
# Default threat models. MNIST: L∞ ε = 0.3 (Madry et al. 2018; ATER; Shaham et al.), L2 ε = 2.0. Natural 32×32
# colour images (SVHN, CIFAR-10/100): L∞ ε = 8/255 (ATLD's tables; Madry et al.), L2 ε = 0.5. Curve grids: ε from 0
# to the radius and a little beyond, for the accuracy-vs-ε figures. Fixed sets (Shaham et al. §5): MNIST's A_mnist is
# made with the L∞, L2 and L1 one-step attacks, CIFAR-10's A_cifar10 with L∞ and L2 (the natural images' default).
MNIST_EVAL = EvalDefaults(linf_eps=0.3, l2_eps=2.0, linf_grid=(0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
                          l2_grid=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0), fixed_set_norms=("linf", "l2", "l1"))
NATURAL_EVAL = EvalDefaults(linf_eps=8 / 255, l2_eps=0.5,
                            linf_grid=(0.0, 2 / 255, 4 / 255, 6 / 255, 8 / 255, 10 / 255, 12 / 255, 16 / 255),
                            l2_grid=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0))
# tiny stand-ins (robust_core/data/tiny.py); CIFAR-100 keeps 4 training images per class so balanced splits exist
_TINY = (200, 50)

# Per-channel mean / std of the training set's pixels in [0, 1] (the std over all pixels, not the mean of per-image
# stds that some code uses for CIFAR-10: 0.2023, 0.1994, 0.2010).
DATASETS.register("mnist")(Source(
    info=DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,)),
    load=load_mnist,
    display="MNIST", train_size=60000, test_size=10000, eval=MNIST_EVAL,
    description="MNIST, 60,000 train / 10,000 test (torchvision layout under data.root)",
    tiny=TinyFormat(_TINY, "MNIST", _write_mnist),
))
DATASETS.register("svhn")(Source(
    info=DatasetInfo("svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    load=load_svhn,
    display="SVHN", train_size=73257, test_size=26032, eval=NATURAL_EVAL,
    description="SVHN cropped digits, 73,257 train / 26,032 test (extra not used); label 10 -> 0",
    tiny=TinyFormat(_TINY, _SVHN.train[0], _write_svhn),
))
DATASETS.register("cifar10")(Source(
    info=DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    load=load_cifar10,
    display="CIFAR-10", train_size=50000, test_size=10000, eval=NATURAL_EVAL,
    description="CIFAR-10, 50,000 train / 10,000 test",
    tiny=TinyFormat(_TINY, _CIFAR10.folder, _write_cifar10),
))
DATASETS.register("cifar100")(Source(
    info=DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    load=load_cifar100,
    display="CIFAR-100", train_size=50000, test_size=10000, eval=NATURAL_EVAL,
    description="CIFAR-100 (fine labels), 50,000 train / 10,000 test",
    tiny=TinyFormat((400, 100), _CIFAR100.folder, _write_cifar100),
))
