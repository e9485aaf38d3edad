"""The architectures catdog trains: one table, readable without importing Keras.

Adding an architecture is one entry in ``ARCHS`` and its builder function. The command line
reads names and descriptions from here (``catdog train --arch``), so ``catdog --help`` never
loads TensorFlow; ``make_model`` resolves the builder only when a model is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

#: How an architecture is trained: ``fit`` trains the whole network in one phase;
#: ``transfer`` trains a new head on a frozen pretrained backbone, then fine-tunes its top
#: blocks (and may train the head on cached backbone features first).
Trainer = Literal["fit", "transfer"]


@dataclass(frozen=True, slots=True)
class Arch:
    """One trainable architecture and the defaults ``catdog train`` uses for it."""

    name: str
    #: Square input side in pixels when the caller gives none.
    input_size: int
    #: ``module:function`` building the network from the (augmented) input to the softmax
    #: output, called as ``f(x, num_classes, **options)`` with those of ``make_model``'s
    #: options (``input_shape``, ``dropout``, ``widths``, ``weights``) it names.
    builder: str
    trainer: Trainer
    #: One line for ``--help``.
    description: str
    epochs: int
    batch_size: int
    #: Peak learning rate (AdamW, after one warm-up epoch, then cosine decay).
    learning_rate: float
    #: Random flips, rotations and zooms while training (off for the few-second test model).
    augment: bool = True

    def build_fn(self) -> Callable[..., Any]:
        """The builder function (imports its module, and with it Keras)."""
        module, _, function = self.builder.partition(":")
        return getattr(import_module(module), function)  # type: ignore[no-any-return]


#: Every architecture, by name; the first is the smallest. Epochs, batch sizes and learning
#: rates are sized for a 2-core CPU (early stopping usually ends scratch runs sooner).
ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            "tiny",
            input_size=32,
            builder="catdog.training.model:tiny",
            trainer="fit",
            description="two conv layers at 32 px, a few-second model for tests and demos",
            epochs=2,
            batch_size=8,
            learning_rate=1e-2,
            augment=False,
        ),
        Arch(
            "scratch",
            input_size=96,
            builder="catdog.training.model:scratch",
            trainer="fit",
            description="a small residual CNN trained from random weights (--widths sizes it)",
            epochs=16,
            batch_size=64,
            learning_rate=2e-3,
        ),
        Arch(
            "lite0",
            input_size=224,
            builder="catdog.training.model:lite0",
            trainer="transfer",
            description="EfficientNet-Lite0 with ImageNet weights, fine-tuned (the shipped model)",
            epochs=8,
            batch_size=32,
            learning_rate=1e-3,
        ),
        Arch(
            "lite1",
            input_size=240,
            builder="catdog.training.model:lite1",
            trainer="transfer",
            description="EfficientNet-Lite1 at 240 px, deeper than lite0: slower, more accurate",
            epochs=8,
            batch_size=32,
            learning_rate=1e-3,
        ),
        Arch(
            "lite2",
            input_size=260,
            builder="catdog.training.model:lite2",
            trainer="transfer",
            description="EfficientNet-Lite2 at 260 px, wider and deeper: slowest, most accurate",
            epochs=8,
            batch_size=32,
            learning_rate=1e-3,
        ),
    )
}


def get_arch(name: str) -> Arch:
    """The architecture called ``name``; a ValueError listing the choices otherwise."""
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}: choose one of {', '.join(ARCHS)}") from None
