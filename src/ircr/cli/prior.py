"""``ircr prior``: build, show and apply the morphological prior of PIAC.

* ``ircr prior build DATASET... --out PRIOR``: DATASET is ``name:root`` (a dataset reader,
  e.g. ``cpm15:/data/CPM15/train``) or a prepared dataset folder (its labelled images).
* ``ircr prior show PRIOR [-o densities.png]``: print the metadata, optionally plot.
* ``ircr prior score PRIOR IMAGE LABELS``: per-nucleus features and scores as CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ircr.cli.data import parse_options
from ircr.data.sample import Sample
from ircr.errors import IrcrError
from ircr.io.wsi import check_mpp


def register(subparsers: Any) -> None:
    """Add ``ircr prior {build,show,score}``."""
    parser = subparsers.add_parser("prior", help="build, show and apply the morphological prior")
    sub = parser.add_subparsers(dest="prior_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: _help(parser))

    b = sub.add_parser("build", help="build a prior from labelled datasets")
    b.add_argument("datasets", nargs="+", metavar="DATASET",
                   help="name:root (e.g. cpm15:/data/CPM15/train) or a prepared dataset folder")
    b.add_argument("--out", "-o", required=True, type=Path, help="output .npz")
    b.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="reader option for every name:root dataset, repeatable "
                        "(e.g. --option fix_known_swaps=true for the shared CPM-15 copy)")
    b.add_argument("--bandwidth", default=None,
                   help="KDE bandwidth: scott (default), silverman or a factor of the std")
    b.add_argument("--grid", type=int, default=512, help="grid points per feature (default 512)")
    b.add_argument("--mpp", type=float, default=None,
                   help="resample every image and label map to this pixel size (µm/px) "
                        "before measuring, e.g. 0.25 for a 40x target from 20x Lizard "
                        "(default: each image at its own pixels)")
    b.set_defaults(func=_build)

    s = sub.add_parser("show", help="print a prior's metadata and plot its densities")
    s.add_argument("prior", type=Path, metavar="PRIOR", help="prior .npz ('default' = packaged)")
    s.add_argument("-o", "--out", type=Path, default=None, help="PNG of the five densities")
    _rule_args(s)
    s.set_defaults(func=_show)

    c = sub.add_parser("score", help="score every nucleus of a labelled image (CSV)")
    c.add_argument("prior", type=Path, metavar="PRIOR", help="prior .npz ('default' = packaged)")
    c.add_argument("image", type=Path, metavar="IMAGE")
    c.add_argument("labels", type=Path, metavar="LABELS", help="instance label map (PNG/TIFF/NPY)")
    c.add_argument("-o", "--out", type=Path, default=None, help="CSV file (default: stdout)")
    _rule_args(c)
    c.set_defaults(func=_score)


def _rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--combine", choices=("mean", "geometric"), default="mean",
                   help="score rule (default mean)")
    p.add_argument("--tau", type=float, default=None,
                   help="threshold (default 0.35 for mean, 0.2 for geometric)")


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _prepared_samples(root: Path) -> Iterator[Sample]:
    from ircr.data.store import PreparedDataset

    ds = PreparedDataset(root)
    labelled = [i for i, m in enumerate(ds.images) if m.get("labelled")]
    if not labelled:
        raise IrcrError(f"{root}: prepared dataset has no labelled images")
    for i in labelled:
        m = ds.images[i]
        meta = {"name": m["name"], "source": m.get("source") or ds.source or root.name,
                "mpp": m.get("mpp"), "path": str(root / str(m["image"]))}
        yield Sample(ds.load_image(i), ds.load_inst(i), meta)


def open_dataset_spec(spec: str, options: dict[str, Any]) -> Iterator[Sample]:
    """``name:root`` -> reader samples; an existing folder -> prepared dataset samples."""
    from ircr.data.datasets import DATASETS, open_dataset

    name, sep, root = spec.partition(":")
    if sep and name in DATASETS:
        return open_dataset(name, root, **options)
    path = Path(spec)
    if path.is_dir():
        if (path / "dataset.json").is_file():
            return _prepared_samples(path)
        raise IrcrError(f"{path}: not a prepared dataset (no dataset.json); use name:root, e.g. "
                        f"cpm15:{path}")
    raise IrcrError(f"{spec}: expected name:root with name in {', '.join(DATASETS)}, or a "
                    "prepared dataset folder")


def _bandwidth(value: str | None) -> float | str | None:
    if value is None or value in ("scott", "silverman"):
        return value
    try:
        f = float(value)
    except ValueError:
        raise IrcrError(f"--bandwidth: expected scott, silverman or a number, got '{value}'"
                        ) from None
    if not f > 0:
        raise IrcrError(f"--bandwidth: must be positive, got {value}")
    return f


def _build(args: argparse.Namespace) -> int:
    from itertools import chain

    from ircr.ssl.prior import MorphPrior

    options = parse_options(args.option)
    bw = _bandwidth(args.bandwidth)
    target = None if args.mpp is None else check_mpp(args.mpp, key="--mpp")
    streams = [open_dataset_spec(spec, options) for spec in args.datasets]
    samples: Iterator[Sample] = chain(*streams)
    if target is not None:
        samples = at_mpp(samples, target)
    prior = MorphPrior.build(samples, bandwidth=bw, grid=args.grid,
                             meta={"datasets": list(args.datasets), "resampled_to_mpp": target})
    prior.save(args.out)
    m = prior.meta
    print(f"wrote {args.out}: {m['n_nuclei']} nuclei (border nuclei excluded) from "
          f"{m['n_images']} images of {', '.join(m['sources'])}; per mpp {m['nuclei_per_mpp']}")
    return 0


def at_mpp(samples: Iterator[Sample], mpp: float) -> Iterator[Sample]:
    """Each sample resampled to ``mpp`` µm/px (image: area/bilinear, labels: nearest);
    within 5 % it is left as it is. A sample of unknown pixel size is a one-line error."""
    from ircr.inference.scale import processing_size, rescale_factor, resize_image, resize_labels

    for s in samples:
        own = s.meta.get("mpp")
        if not own:
            where = s.meta.get("path") or s.name
            raise IrcrError(f"{where}: pixel size unknown, so --mpp cannot resample it (give "
                            "the reader's --option mpp=... or leave --mpp out)")
        f = rescale_factor(float(own), mpp)
        if f == 1.0 or s.inst is None:
            yield s
            continue
        h, w = processing_size(s.image.shape[0], s.image.shape[1], f)
        yield Sample(resize_image(s.image, h, w), resize_labels(s.inst, h, w),
                     {**s.meta, "mpp": mpp, "native_mpp": float(own)})


def _load(path: Path, combine: str) -> Any:
    from ircr.ssl.prior import MorphPrior, default_prior_path

    return MorphPrior.load(default_prior_path() if str(path) == "default" else path, combine)


def _show(args: argparse.Namespace) -> int:
    from ircr.ssl.prior import PRIOR_FEATURES, plot_prior

    prior = _load(args.prior, args.combine)
    tau = prior.default_tau if args.tau is None else args.tau
    print(json.dumps(prior.meta, indent=2, sort_keys=True))
    for k, name in enumerate(PRIOR_FEATURES):
        g = prior.grids[k]
        print(f"{name:>13}: grid [{g[0]:.4g}, {g[-1]:.4g}] ({g.size} points), "
              f"bandwidth {prior.bandwidths[k]:.4g}, mode {g[np.argmax(prior.densities[k])]:.4g}")
    print(f"combine {prior.combine}, tau {tau:g}")
    if args.out is not None:
        plot_prior(prior, args.out, tau)
        print(f"wrote {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from ircr.features import nucleus_features
    from ircr.io.image import check_same_size, read_image, read_label_map
    from ircr.ssl.prior import PRIOR_FEATURES, prior_keeps

    prior = _load(args.prior, args.combine)
    tau = prior.default_tau if args.tau is None else args.tau
    image, labels = read_image(args.image), read_label_map(args.labels)
    check_same_size(image, labels, args.image, args.labels)
    f = nucleus_features(image, labels)
    scores = prior.score_features(f)
    kept = prior_keeps(scores, f["touches_border"], tau)
    cols = ["id", *PRIOR_FEATURES, "touches_border", "score", "kept"]
    fh = sys.stdout if args.out is None else _open_out(args.out)
    try:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for i in range(f["id"].size):
            w.writerow([int(f["id"][i]), *(f"{f[k][i]:.6g}" for k in PRIOR_FEATURES),
                        int(f["touches_border"][i]), f"{scores[i]:.6f}", int(kept[i])])
    finally:
        if fh is not sys.stdout:
            fh.close()
    n = int(f["id"].size)
    print(f"{n} nuclei, {int((~kept).sum())} below tau {tau:g} ({prior.combine})",
          file=sys.stderr)
    return 0


def _open_out(path: Path) -> Any:
    try:
        return path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise IrcrError(f"{path}: cannot write CSV ({exc.strerror or exc})") from None
