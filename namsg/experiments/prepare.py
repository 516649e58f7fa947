"""Data preparation: a loaded :class:`~namsg.experiments.data.Dataset` made into the network's
inputs (float32, N x C x H x W), its minibatches (shuffled, sharded between the workers of a
job) and CIFAR-10's training-time augmentation; one place for the choices the paper leaves
open."""

import numpy as np

CIFAR_CROP = 28


class Prepared:
    """Training and validation arrays ready for the network (float32, N x C x H x W), and the
    training-time augmentation, if any."""

    def __init__(self, train_x, train_y, test_x, test_y, augment=None):
        self.train_x, self.train_y = train_x, train_y
        self.test_x, self.test_y = test_x, test_y
        self.augment = augment

    def train_batches(self, batch_size, rng, rank=0, workers=1, whole_batches=False):
        """Shuffled minibatches; the last, partial one is kept (Gluon DataLoader's default)
        unless ``whole_batches``. With ``workers`` > 1 this worker takes every ``workers``-th
        example of the shuffled order from ``rank`` on. A parameter-server job asks for whole
        batches even with one worker: MXNet refuses a batch size that changes when the servers
        update, and every worker then makes the same number of steps."""
        order = rng.permutation(len(self.train_y))
        if workers > 1:
            order = order[rank::workers]
        if whole_batches or workers > 1:
            order = order[:len(self.train_y) // workers // batch_size * batch_size]
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            x = self.train_x[rows]
            if self.augment is not None:
                x = self.augment(x, rng)
            yield x, self.train_y[rows]

    def test_batches(self, batch_size):
        for start in range(0, len(self.test_y), batch_size):
            yield (self.test_x[start:start + batch_size], self.test_y[start:start + batch_size])


def prepare_mnist(dataset):
    """Pixels scaled to [0, 1] (B.1 states no preprocessing; this is the conventional one)."""
    def to_input(images):
        return (images.astype(np.float32) / 255.0)[:, None, :, :]
    return Prepared(to_input(dataset.train.images), dataset.train.labels,
                    to_input(dataset.test.images), dataset.test.labels)


def random_crop_flip(x, rng, crop=CIFAR_CROP):
    """B.3: a random crop x crop window of the image or of its horizontal flip."""
    n, _, h, w = x.shape
    flip = rng.random(n) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, :, ::-1], x)
    top = rng.integers(0, h - crop + 1, size=n)
    left = rng.integers(0, w - crop + 1, size=n)
    rows = top[:, None] + np.arange(crop)[None, :]
    cols = left[:, None] + np.arange(crop)[None, :]
    return x[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


def prepare_cifar10(dataset):
    """B.3: subtract the training set's global mean and divide by its standard deviation (one
    scalar each over all pixels and channels); validation images are normalised the same way
    and kept at 32x32."""
    train = dataset.train.images.astype(np.float32)
    mean, std = float(train.mean()), float(train.std())

    def to_input(images):
        return ((images.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy()
    return Prepared(to_input(dataset.train.images), dataset.train.labels,
                    to_input(dataset.test.images), dataset.test.labels,
                    augment=random_crop_flip)


PREPARE = {'mnist': prepare_mnist, 'cifar10': prepare_cifar10}
