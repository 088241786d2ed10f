"""Patient-level k-fold splits: every case of a patient falls in the same fold."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["patient_folds", "split_by_patient"]


def patient_folds(patients: Sequence[Hashable], k: int, seed: int = 0) -> list[int]:
    """Fold (0..k-1) of each item, with all items of one patient in one fold.

    Patients are shuffled with ``seed`` and dealt round-robin, so fold sizes (in patients)
    differ by at most one.

    Raises
    ------
    ValueError
        If ``k < 2`` or there are fewer patients than folds.
    """
    unique = sorted(set(patients), key=str)
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if len(unique) < k:
        raise ValueError(f"{len(unique)} patient(s) cannot make {k} folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: pos % k for pos, j in enumerate(order)}
    return [fold_of[p] for p in patients]


def split_by_patient(patients: Sequence[Hashable], k: int, fold: int, seed: int = 0
                     ) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)`` of fold ``fold`` of a patient-level k-fold split."""
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    folds = patient_folds(patients, k, seed)
    train = [i for i, f in enumerate(folds) if f != fold]
    test = [i for i, f in enumerate(folds) if f == fold]
    return train, test
