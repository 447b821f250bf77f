"""Stage 1, data: a release on disk in -> preprocessed, cached cases -> training samples out.

Enters: a release's folder (BraTS 2018-2025, MSD Task01, LGG slices) and the ``data`` config.
Leaves: :class:`~lightning_brats.data.settings.PreprocessingSettings`, cached cases
(:mod:`.preprocess`), training samples and batches (:mod:`.sampling`, :mod:`.datamodule`), and the
label/region mapping (:mod:`.labels`) every later stage uses.

- :mod:`.release` (a release's description, ``data.release``), :mod:`.data_config` (the ``data`` config's
  three parts and the mapping from the flat shape before them);
- :mod:`.readers`: one reader per release layout (:mod:`.layouts` keeps the old names);
- :mod:`.settings`, :mod:`.normalization` (the normalisation and crop tables), :mod:`.preprocess`
  (crop, normalise, resample, cache), :mod:`.splits` (cross-validation folds);
- :mod:`.sampling`, :mod:`.intensity_settings`, :mod:`.intensity_augment`, :mod:`.batch_augment`, :mod:`.datamodule`;
- :mod:`.labels` (label codes <-> nested regions), :mod:`.phantoms` (synthetic cases for tests).

Imports nothing from the later stages (training, inference, evaluation, cli).
"""
