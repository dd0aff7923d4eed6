"""sample_data.py — what mkidx.py and mknpy.py share: their command line and the numbers they
write (element i is (37 * i) % 256, or i % K with --labels K; --set I=V overrides one;
--cut N keeps the first N bytes of the element data)."""
import sys


def parse_args(valued, switches):
    """sys.argv[1:] as (positional words, {flag: value} for the flags in `valued`, the set of
    the flags in `switches` that were given)."""
    args = sys.argv[1:]
    opts = {}
    for flag in ("--labels", "--set", "--cut") + tuple(valued):
        if flag in args:
            i = args.index(flag)
            opts[flag] = args[i + 1]
            del args[i : i + 2]
    given = {s for s in switches if s in args}
    args = [a for a in args if a not in given]
    return args, opts, given


def values(dims, opts, convert):
    """The elements of a tensor of shape dims; convert turns a --set value into the type."""
    count = 1
    for d in dims:
        count *= d
    if "--labels" in opts:
        out = [i % int(opts["--labels"]) for i in range(count)]
    else:
        out = [(37 * i) % 256 for i in range(count)]
    if "--set" in opts:
        i, v = opts["--set"].split("=")
        out[int(i)] = convert(v)
    return out


def cut(data, opts):
    """data, truncated to --cut bytes when asked."""
    return data[: int(opts["--cut"])] if "--cut" in opts else data
