"""Parameter blocks of the datasets (torch-free: the grid reads them without importing the loaders)."""

from __future__ import annotations

from dataclasses import dataclass, field

from robustmtl.params import added_later, at_least, between, one_of, positive


@dataclass(frozen=True)
class SyntheticParams:
    n_train: int = field(default=2000, metadata=positive())
    n_val: int = field(default=1000, metadata=positive())
    n_test: int = field(default=2000, metadata=positive())
    core_dim: int = field(default=5, metadata=positive())
    spurious_dim: int = field(default=5, metadata=positive())
    noise_dim: int = field(default=10, metadata=at_least(0))
    core_mean: float = field(default=0.5, metadata=at_least(0.0))
    core_std: float = field(default=1.0, metadata=positive())
    spurious_mean: float = field(default=1.0, metadata=at_least(0.0))
    spurious_std: float = field(default=0.5, metadata=positive())
    noise_std: float = field(default=1.0, metadata=positive())
    p_train: float = field(default=0.95, metadata=between(0.0, 1.0))
    p_eval: float = field(default=0.5, metadata=between(0.0, 1.0))
    data_seed: int = field(default=0, metadata=at_least(0))
    # > 0: rescale spurious_mean and spurious_std together (the spurious block's separability stays) so the
    # spurious block's leading-direction variance is this multiple of the core block's (robustmtl/data/regime.py).
    spurious_variance_ratio: float = field(default=0.0, metadata=added_later(at_least(0.0)))
    # The pre-training stage's input pool: 0 = the training split's inputs; N > 0 = N unlabeled examples of
    # their own, whose spurious attribute agrees with the label at rate pretrain_p_agree.
    pretrain_n: int = field(default=0, metadata=added_later(at_least(0)))
    pretrain_p_agree: float = field(default=0.5, metadata=added_later(between(0.0, 1.0)))


@dataclass(frozen=True)
class TextSpuriousParams:
    text_n_train: int = field(default=2000, metadata=positive())
    text_n_val: int = field(default=500, metadata=positive())
    text_n_test: int = field(default=1000, metadata=positive())
    text_p_train: float = field(default=0.95, metadata=between(0.0, 1.0))
    text_p_eval: float = field(default=0.5, metadata=between(0.0, 1.0))
    spurious_token: str = "spoiler:"
    text_data_seed: int = field(default=0, metadata=at_least(0))
    # How a=1 marks a snippet: "prefix" puts spurious_token first (a unique first token, trivially read from
    # the CLS position); "word" inserts one word drawn from text_shortcut_words at a random word position.
    text_shortcut: str = field(default="prefix", metadata=added_later(one_of("prefix", "word")))
    text_shortcut_words: tuple[str, ...] = field(default=("incidentally", "furthermore", "moreover", "likewise",
                                                          "additionally"), metadata=added_later())


@dataclass(frozen=True)
class MNISTSpuriousParams:
    mnist_n_train: int = field(default=3000, metadata=positive())
    mnist_n_val: int = field(default=1000, metadata=positive())
    mnist_n_test: int = field(default=1000, metadata=positive())
    mnist_p_train: float = field(default=0.95, metadata=between(0.0, 1.0))
    mnist_p_eval: float = field(default=0.5, metadata=between(0.0, 1.0))
    mnist_data_seed: int = field(default=0, metadata=at_least(0))
    # The pre-training stage's input pool: 0 = the training split; N > 0 = N digits of every class, drawn
    # from the images outside val and test, coloured red or green independently of the label.
    mnist_pretrain_n: int = field(default=0, metadata=added_later(at_least(0)))


@dataclass(frozen=True)
class CelebAParams:
    celeba_target: str = "Blond_Hair"
    celeba_attr: str = "Male"


@dataclass(frozen=True)
class CivilCommentsSmallParams:
    # Which of the subset's file pairs to read: "coarse" trains on 4 groups (label x mentions any identity),
    # "fine" on 16 (label x each identity). Evaluation groups are the same 16 in both.
    civil_granularity: str = field(default="coarse", metadata=one_of("coarse", "fine"))
