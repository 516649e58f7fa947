"""Data preparation: CIFAR-10's normalisation and augmentation, minibatches and the shards of a
job's workers."""

import numpy as np

from namsg.experiments import prepare
from test_train import _tiny_mnist


def test_random_crop_flip_takes_windows_of_the_image_or_its_mirror():
    rng = np.random.default_rng(0)
    x = rng.random((20, 3, 32, 32)).astype(np.float32)
    out = prepare.random_crop_flip(x, np.random.default_rng(1))
    assert out.shape == (20, 3, 28, 28)
    for image, crop in zip(x, out):
        found = False
        for candidate in (image, image[:, :, ::-1]):
            for top in range(5):
                for left in range(5):
                    if np.array_equal(candidate[:, top:top + 28, left:left + 28], crop):
                        found = True
        assert found


def test_cifar10_preparation_normalises_with_training_statistics():
    from namsg.experiments.data import Dataset, Split
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (10, 32, 32, 3)).astype(np.uint8)
    test_images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    prepared = prepare.prepare_cifar10(Dataset(Split(train_images, np.zeros(10, np.int32)),
                                               Split(test_images, np.zeros(4, np.int32)), 'x'))
    assert prepared.train_x.shape == (10, 3, 32, 32) and prepared.test_x.shape == (4, 3, 32, 32)
    assert abs(prepared.train_x.mean()) < 1e-5 and abs(prepared.train_x.std() - 1) < 1e-5
    mean, std = train_images.mean(), train_images.std()
    np.testing.assert_allclose(prepared.test_x, (test_images.transpose(0, 3, 1, 2) - mean) / std,
                               rtol=1e-4, atol=1e-4)


def test_workers_of_a_job_get_disjoint_equal_shards_of_whole_batches():
    data = _tiny_mnist(n_train=70)
    shards = [list(data.train_batches(16, np.random.default_rng([1, 2]), rank, 2))
              for rank in range(2)]
    assert [len(s) for s in shards] == [2, 2]
    assert all(len(y) == 16 for s in shards for _, y in s)
    rows = [np.concatenate([x for x, _ in s]).reshape(32, -1) for s in shards]
    assert not any((a == b).all() for a in rows[0] for b in rows[1])
