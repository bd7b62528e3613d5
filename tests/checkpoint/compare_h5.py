"""Compares two HDF5 files object by object: the same groups and datasets, each with the same
dtype, shape, bytes and attributes, and for virtual datasets the same mappings (file, dataset
and selections). Used to show that a new save writes what an older version wrote.

Usage: compare_h5.py EXPECTED ACTUAL. Prints each difference; exits 1 when there is one."""
import sys

import h5py
import numpy as np


def objects(f):
    out = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj))
    return out


def attrs(obj):
    return {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}


def mappings(d):
    if not d.is_virtual:
        return None
    return [(m.file_name, m.dset_name, m.vspace.get_select_bounds(), m.src_space.shape, m.src_space.get_select_npoints())
            for m in d.virtual_sources()]


def compare(a_path, b_path):
    problems = []
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        oa, ob = objects(a), objects(b)
        for name in sorted(set(oa) ^ set(ob)):
            problems.append(f"/{name}: only in {'expected' if name in oa else 'actual'}")
        if attrs(a) != attrs(b):
            problems.append("/: attributes differ")
        for name in sorted(set(oa) & set(ob)):
            x, y = oa[name], ob[name]
            if type(x) is not type(y):
                problems.append(f"/{name}: {type(x).__name__} vs {type(y).__name__}")
                continue
            if attrs(x) != attrs(y):
                problems.append(f"/{name}: attributes differ: {attrs(x)} vs {attrs(y)}")
            if isinstance(x, h5py.Dataset):
                if x.dtype != y.dtype or x.shape != y.shape:
                    problems.append(f"/{name}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
                elif np.asarray(x[()]).tobytes() != np.asarray(y[()]).tobytes():
                    problems.append(f"/{name}: the data differ")
                if mappings(x) != mappings(y):
                    problems.append(f"/{name}: virtual mappings differ: {mappings(x)} vs {mappings(y)}")
        print(f"{len(oa)} objects compared")
    return problems


if __name__ == "__main__":
    found = compare(sys.argv[1], sys.argv[2])
    for p in found:
        print(p)
    sys.exit(1 if found else 0)
