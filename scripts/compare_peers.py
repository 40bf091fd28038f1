"""fastbp vs PyTorch vs scikit-learn: samples/s per training epoch (see fastbp/bench.py)."""
from fastbp.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
