"""A data file read for training: opened (format, columns, row count) and scanned once (fastbp.files.scan):
its schema, held-out validation rows and training row count, as Trainer.fit_file and `fastbp train` use them.
Opening is cheap and separate from the scan, so a caller can check its options before the first pass."""
from .preprocess import Categorical, Preprocessor
from .sources import DEFAULT_CHUNK_ROWS, CsvFormat, open_source


class FileData:
    """path: a .csv (also compressed), .parquet, .npy or .npz file, or a folder or glob of parts. After scan():
    prep (the fitted Preprocessor, with the class counts and row order of this pass), held (validation
    columns or None), n_rows (training rows), val_split and seed (which rows were held out)."""

    def __init__(self, path, chunk_rows=DEFAULT_CHUNK_ROWS, csv=CsvFormat()):
        self.path = path
        self.source = open_source(path, chunk_rows, csv)
        self.prep = self.held = self.n_rows = None
        self.val_split, self.seed = 0.0, 0

    def feature_columns(self, target, features=None, exclude=()):
        """The feature columns scan() would use (Preprocessor.feature_columns)."""
        return Preprocessor.feature_columns(self.source, target, features, exclude)

    def scan(self, target, features=None, exclude=(), task=None, impute=None, max_categories=1000, val_split=0.0,
             val_max_rows=200_000, seed=0, progress=None, comm=None, scale_target=True, numeric="standard",
             bins=16, categorical=Categorical()):
        """The first pass (Preprocessor.fit's arguments); returns self."""
        self.prep, self.held, self.n_rows = Preprocessor.fit(
            self.source, target, features, task, impute, max_categories, val_split, val_max_rows=val_max_rows,
            seed=seed, progress=progress, comm=comm, exclude=exclude, scale_target=scale_target, numeric=numeric,
            bins=bins, categorical=categorical)
        self.val_split, self.seed = val_split, seed
        return self
