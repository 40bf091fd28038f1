"""fastbp command line. `fastbp demo` trains on a built-in synthetic dataset (no download)."""
import argparse
import sys
import time

import numpy as np


def synthetic_classification(n_samples, n_features, n_classes, seed):
    """A non-linear tabular problem: the class is the arg-max of random quadratic scores."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features)).astype(np.float32)
    A = rng.normal(size=(n_features, n_classes)) / np.sqrt(n_features)
    B = rng.normal(size=(n_features, n_classes)) / n_features
    scores = X @ A + (X ** 2) @ B + 0.1 * rng.normal(size=(n_samples, n_classes))
    return X, scores.argmax(axis=1)


def demo(args):
    from . import Trainer

    X, y = synthetic_classification(args.rows, 20, 3, args.seed)
    n_train = int(0.8 * len(X))
    hidden = [int(h) for h in args.hidden.split(",")]
    trainer = Trainer([20, *hidden, 3], activation="relu", loss="cross_entropy", lr=0.05, momentum=0.9,
                      batch_size=128, epochs=args.epochs, seed=args.seed, n_threads=args.threads)
    print(f"fastbp demo: {len(X)} synthetic rows x 20 features, 3 classes; MLP {trainer.layer_sizes}, "
          f"SGD lr=0.05 momentum=0.9, batch 128")
    start = time.perf_counter()
    trainer.fit(X[:n_train], y[:n_train])
    for h in trainer.history:
        print(f"  epoch {h['epoch']:3d}  loss {h['loss']:.4f}  {h['samples_per_s']:>12,.0f} samples/s")
    print(f"trained in {time.perf_counter() - start:.2f} s (including compilation on a first run)")
    scores = trainer.evaluate(X[n_train:], y[n_train:])
    print(f"held-out: loss {scores['loss']:.4f}, accuracy {scores['accuracy']:.3f}")
    if args.out:
        trainer.save(args.out)
        print(f"model saved to {args.out}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastbp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="train on a built-in synthetic dataset and report")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--hidden", default="128,128", help="hidden layer sizes, comma-separated")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="save the trained model to this .fbp file")
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"fastbp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
