"""Class-balanced batches for metric learning: P classes × m images in every batch.

The metric-learning protocol (Proxy-Anchor teacher, relaxed-contrastive transfer on CUB-200,
Cars-196, SOP) trains on batches of ``B = P · m`` images: ``P = B // m`` distinct classes with
``m = images_per_class`` images each (the paper: B = 90, e.g. 45 classes × 2 images). Uniform
random batches would hold almost no positive pair on SOP (11,318 classes of ~5 images).

:class:`ClassBalancedBatchSampler` is an :class:`~ssl_transfer.sampling.EpochBatchSampler` with
another rule for what batch j of epoch e holds; everything else is inherited: it yields keys
``e · n + i`` (i indexes ``labels``) that :class:`~ssl_transfer.sampling.SeededDataset` decodes
to seed the augmentation of image i by ``(seed, e, i)``; ``set_epoch``, ``skip`` and the
``position`` hook work as there (a resumed run continues at the exact batch), and ``len`` is the
number of steps per epoch, ``n // B``.

**Which images (the sampling rule).** Epoch e is drawn from one generator seeded by
``mix_seed(seed, STREAM, e)``, so every batch is a pure function of ``(seed, e, j)``:

- *Classes.* The class stream of an epoch is a sequence of random permutations of the C
  classes; batch j takes the next P classes of it. When a permutation runs out in the middle of
  a batch, the classes of the next permutation that the batch already holds are moved to the
  end of that permutation, so the P classes of a batch are always distinct and every class is
  drawn equally often (±1) in an epoch. (The reference implementations draw P classes
  uniformly at random for every batch; the frequencies here are the same on average, with less
  variance.)
- *Images of a class.* Each class walks through a random permutation of its images, m at a
  time, across the batches of the epoch; when fewer than m remain, the rest is skipped and a
  fresh permutation starts. So a class of s >= m images gives m *distinct* images to every
  batch it is in, and an image is seen about once per epoch when its class is drawn about
  s / m times. A class with s < m images gives all s images plus m - s drawn **with
  replacement** from them (the only case of replacement, as in the Proxy-Anchor/LabelRelaxation
  samplers; theirs always draws with replacement).

The batch lists its P classes one after the other, m images each:
``[c_1 × m, c_2 × m, ..., c_P × m]``.

Note on augmentation: the key of an image is ``e · n + i`` whichever batch draws it, so an image
drawn twice in one epoch (class drawn more than s / m times, or a class smaller than m) gets
the same augmentation both times.

**DDP.** ``batch_size`` is the *global* batch. With k processes each process takes a contiguous
slice of ``P / k`` classes (``B / k`` images) of every global batch: process r takes classes
``[r·P/k, (r+1)·P/k)``. The processes hold distinct classes, every local batch is itself
balanced (m images per class), and the gathered batch [process 0; process 1; ...] is the
single-process batch in its order. P must be divisible by k (a ConfigError says so otherwise).

Example::

    labels = source.labels("train")[train_idx]          # (n,) labels of the items keys index
    sampler = ClassBalancedBatchSampler(labels, images_per_class=2, batch_size=90, seed=0)
    loader = DataLoader(SeededDataset(view_dataset, seed=0), batch_sampler=sampler)
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..sampling import EpochBatchSampler, mix_seed

#: Separates the draws of this sampler from the other uses of ``mix_seed(seed, ...)``
#: (EpochBatchSampler's permutation of (seed, e), SeededDataset's augmentation of (seed, e, i)).
STREAM = 0xBA1A5CED


class ClassBalancedBatchSampler(EpochBatchSampler):
    """Batches of ``batch_size // images_per_class`` distinct classes × ``images_per_class``
    images, as keys ``epoch * n + i``; see the module docstring for the sampling rule.

    Args:
        labels: (n,) integer class of each item (any integer values; only equality matters).
            Item i is what key ``e * n + i`` addresses, i.e. the labels of the dataset wrapped
            by :class:`~ssl_transfer.sampling.SeededDataset`.
        images_per_class: m >= 1, images of each class in a batch.
        batch_size: the global batch B; a multiple of m, with B // m <= number of classes.
        seed: the run's seed; batches are a pure function of (seed, epoch, step).
    """

    def __init__(self, labels, images_per_class: int, batch_size: int, seed: int):
        labels = np.asarray(labels)
        if labels.ndim != 1 or not (labels.dtype.kind in "iu" or labels.size == 0):
            raise ConfigError(
                f"the class-balanced sampler needs a 1-D integer array of labels, got {labels.dtype} of shape "
                f"{labels.shape}; pass the class label of every training item"
            )
        m, b = int(images_per_class), int(batch_size)
        if m < 1:
            raise ConfigError(f"data.images_per_class = {m} must be at least 1; set it to e.g. 2")
        if b < m or b % m:
            raise ConfigError(
                f"data.batch_size = {b} is not a multiple of data.images_per_class = {m}; every batch holds "
                f"batch_size / images_per_class classes × images_per_class images, so set data.batch_size "
                f"to a multiple of {m}"
            )
        super().__init__(len(labels), seed, b)
        self.images_per_class = m
        self.classes_per_batch = b // m
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if self.classes_per_batch > len(classes):
            raise ConfigError(
                f"data.batch_size = {b} with data.images_per_class = {m} needs {self.classes_per_batch} distinct "
                f"classes per batch, but the training split has {len(classes)}; lower data.batch_size or raise "
                f"data.images_per_class (at most {len(classes)} classes per batch)"
            )
        #: The distinct labels, sorted; class c below is ``classes[c]``.
        self.classes = classes
        # members of class c: self._members[self._starts[c]:self._starts[c + 1]] (item indices, ascending)
        self._members = np.argsort(inverse, kind="stable").astype(np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _class_stream(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """(steps, P) class indices: consecutive random permutations of the C classes, P per
        batch, distinct within a batch (see the module docstring)."""
        c, p = len(self.classes), self.classes_per_batch
        out = np.empty((steps, p), dtype=np.int64)
        perm, pos = rng.permutation(c), 0
        for j in range(steps):
            row: list[int] = []
            while len(row) < p:
                if pos == c:  # next permutation; classes already in this batch go to its end
                    perm, pos = rng.permutation(c), 0
                    if row:
                        held = np.isin(perm, row)
                        perm = np.concatenate([perm[~held], perm[held]])
                take = min(p - len(row), c - pos)
                row.extend(perm[pos:pos + take].tolist())
                pos += take
            out[j] = row
        return out

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The ``len(self)`` global batches of ``epoch``: (B,) item indices each, class-major."""
        rng = np.random.default_rng(mix_seed(self.seed, STREAM, epoch))
        steps, m = len(self), self.images_per_class
        if steps == 0:
            return []
        stream = self._class_stream(rng, steps)
        perms: dict[int, np.ndarray] = {}  # class -> its current permutation of item indices
        cursor: dict[int, int] = {}  # class -> next position in it
        batches = []
        for row in stream:
            parts = []
            for cls in row.tolist():
                items = self._members[self._starts[cls]:self._starts[cls + 1]]
                s = len(items)
                if s < m:  # all images, then m - s with replacement
                    parts.append(items[rng.permutation(s)])
                    parts.append(items[rng.integers(0, s, m - s)])
                    continue
                pos = cursor.get(cls, s)
                if pos + m > s:  # fewer than m left: start a fresh permutation
                    perms[cls], pos = items[rng.permutation(s)], 0
                parts.append(perms[cls][pos:pos + m])
                cursor[cls] = pos + m
            batches.append(np.concatenate(parts))
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """This process's item indices for every step of ``epoch`` (before ``skip``): under DDP
        process r of k takes classes ``[r·P/k, (r+1)·P/k)`` of every global batch."""
        rank, world = self._world()
        p = self.classes_per_batch
        if p % world:
            raise ConfigError(
                f"data.batch_size = {self.batch_size} with data.images_per_class = {self.images_per_class} gives "
                f"{p} classes per batch, which do not split evenly over {world} processes; make "
                f"batch_size / images_per_class a multiple of {world} or change trainer.devices"
            )
        local = self.batch_size // world
        return [batch[rank * local:(rank + 1) * local].tolist() for batch in self.global_batches(epoch)]
