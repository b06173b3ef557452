"""The built-in shapes data as a source (gptdraw.data.shapes draws it)."""

from __future__ import annotations

from typing import Iterator

from gptdraw.data.sources.base import Source, SourceItem


class ShapesSource(Source):
    """The built-in shapes data set's training split: the prompts of both evaluation sets (the
    tuning and the report set of `shapes.evaluation_sets(heldout_seed)`) are left out.

    two_object_prob: the share of two-object scenes.
    """

    def __init__(self, count: int, image_size: int, *, seed: int = 0, heldout_seed: int = 0,
                 two_object_prob: float = 0.5):
        from gptdraw.data import shapes

        if count < 1:
            raise ValueError(f"shapes: count must be at least 1, got {count}")
        if not 0.0 <= two_object_prob <= 1.0:
            raise ValueError(f"shapes: two_object_prob must be in [0, 1], got {two_object_prob}")
        shapes.check_image_size(image_size)
        self.count, self.image_size, self.seed = count, image_size, seed
        self.heldout_seed, self.two_object_prob = heldout_seed, two_object_prob
        self._heldout = shapes.heldout_union(shapes.evaluation_sets(heldout_seed))

    def __len__(self) -> int:
        return self.count

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        from gptdraw.data import shapes

        start, stop = self._range(start, stop)
        examples = shapes.generate_examples(
            stop - start, self.image_size, seed=self.seed, heldout=self._heldout, split="train", start=start,
            two_object_prob=self.two_object_prob,
        )
        for index, (image, caption) in enumerate(examples, start):
            yield SourceItem(key=f"shapes-{self.seed}-{index}", caption=caption, image=image)

    def describe(self) -> dict:
        return {"kind": "shapes", "count": self.count, "image_size": self.image_size, "seed": self.seed,
                "heldout_seed": self.heldout_seed, "two_object_prob": self.two_object_prob, "split": "train"}
