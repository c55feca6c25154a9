"""`dqnrun export ckpt=PATH format=torchscript|onnx [out=PATH]`: its arguments; the work is `dqnrun.export`."""

from __future__ import annotations

import sys

from dqnrun.errors import UsageError

USAGE = "usage: dqnrun export ckpt=PATH [format=torchscript|onnx] [out=PATH]"


def parse(argv: list[str]) -> dict[str, str]:
    from dqnrun.export import FORMATS

    args: dict[str, str] = {}
    for a in argv:
        if a in ("-h", "--help"):
            import dqnrun.export

            print(USAGE)
            print(dqnrun.export.__doc__)
            raise SystemExit(0)
        key, sep, value = a.partition("=")
        if not sep:
            raise UsageError(f"{a!r} is not key=value; {USAGE}")
        if key not in ("ckpt", "format", "out"):
            raise UsageError(f"unknown key {key!r}; {USAGE}")
        args[key] = value
    if not args.get("ckpt"):
        raise UsageError(f"ckpt is required; {USAGE}")
    fmt = args.setdefault("format", "torchscript")
    if fmt not in FORMATS:
        raise UsageError(f"format={fmt!r} is not one of {' | '.join(FORMATS)}")
    return args


def main(argv: list[str]) -> int:
    from dqnrun.export import export

    try:
        args = parse(argv)
        path = export(args["ckpt"], args["format"], args.get("out"))
    except UsageError as exc:
        print(f"dqnrun export: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {path} ({args['format']}: float32 observations (B, *obs_shape) -> Q-values (B, A))")
    return 0
