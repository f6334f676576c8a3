#!/usr/bin/env python3
"""OCI image layers and image layouts from directory trees, without a container engine.

images/build.sh stages each layer's files in a directory; this turns the directory into a
layer blob and a list of layers plus a config into an OCI image layout that `crane push`
uploads. The output is a function of the files alone (entries sorted by name, numeric
owners without names, whole-second mtimes set or clamped, gzip without a timestamp), so
unchanged inputs give the same digests and a registry that holds them is not pushed to.

    oci.py layer  --from DIR --out DIR [--compression none|gzip] [--mtime N | --clamp-mtime-from T]
                  [--exclude-contents PATH]... [--xattr PATH=KEY=HEX]...
    oci.py image  --layer DIR... --out LAYOUT [--env K=V]... [--entrypoint JSON] [--cmd JSON]
                  [--user U] [--workdir D] [--history TEXT]...

`layer` writes layer.tar or layer.tar.gz and layer.json (mediaType, digest, size, diffID) into
--out; `image` writes the layout (blobs hard-linked from the layer dirs) and prints the
manifest's digest.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path

LAYER_MEDIA_TYPES = {  # --compression: (mediaType, file name)
    "gzip": ("application/vnd.oci.image.layer.v1.tar+gzip", "layer.tar.gz"),
    "none": ("application/vnd.oci.image.layer.v1.tar", "layer.tar"),
}
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
# Level 1 compresses a Debian root file system to 36% (level 6: 32%) at three times the
# speed; gzip is deterministic for a given zlib and level.
GZIP_LEVEL = 1
CHUNK = 1 << 20


class HashingWriter:
    """A write-only file that hashes and counts what passes through it to `out`."""

    def __init__(self, out):
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def newest_mtime_before(root: Path, limit: int) -> int:
    """The newest whole-second mtime in `root` older than `limit` (0 if none).

    A Debian root filesystem mixes files from packages (mtimes from the packages' builds) with
    files written at install time (maintainer scripts, timestamp .pyc files). Clamping to the
    newest package mtime makes the install-time files reproducible while keeping every
    package file's own mtime, which Debian's timestamp-based .pyc files record and check.
    """
    newest = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            m = int(os.lstat(os.path.join(dirpath, name)).st_mtime)
            if newest < m < limit:
                newest = m
    return newest


def parse_xattrs(specs: list[str]) -> dict[str, dict[str, str]]:
    """PATH=KEY=HEX -> {PATH: {"SCHILY.xattr.KEY": value}} (PAX records, as GNU tar and
    containerd's unpacker read them; the value's bytes as latin-1 so each byte stays one)."""
    xattrs: dict[str, dict[str, str]] = {}
    for spec in specs:
        try:
            path, key, value = spec.split("=", 2)
            raw = bytes.fromhex(value)
        except ValueError:
            raise SystemExit(f"oci.py: --xattr {spec!r}: expected PATH=KEY=HEX")
        xattrs.setdefault(path.strip("/"), {})["SCHILY.xattr." + key] = raw.decode("latin-1")
    return xattrs


def write_layer(args: argparse.Namespace) -> None:
    src = Path(args.src)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    media_type, file_name = LAYER_MEDIA_TYPES[args.compression]
    if args.clamp_mtime_from is not None:
        clamp = newest_mtime_before(src, args.clamp_mtime_from)
    else:
        clamp = None
    excluded = {p.strip("/") for p in args.exclude_contents}
    xattrs = parse_xattrs(args.xattr)
    unused_xattrs = set(xattrs)

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parent = os.path.dirname(info.name)
        if any(parent == e or parent.startswith(e + "/") for e in excluded):
            return None
        info.uname = info.gname = ""
        if args.mtime is not None:
            info.mtime = args.mtime
        elif clamp is not None:
            info.mtime = min(int(info.mtime), clamp)
        else:
            info.mtime = int(info.mtime)
        if info.name in xattrs:
            info.pax_headers.update(xattrs[info.name])
            unused_xattrs.discard(info.name)
        return info

    tmp = out / (file_name + ".tmp")
    with open(tmp, "wb") as f:
        blob = HashingWriter(f)
        compressed = (
            gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=GZIP_LEVEL)
            if args.compression == "gzip"
            else None
        )
        tar_stream = HashingWriter(compressed if compressed else blob)
        with tarfile.open(fileobj=tar_stream, mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=CHUNK) as tar:
            # tarfile.add recurses in sorted order and records hard links once per inode.
            for name in sorted(os.listdir(src)):
                tar.add(src / name, arcname=name, filter=normalise)
        if compressed:
            compressed.close()
    if unused_xattrs:
        tmp.unlink()
        raise SystemExit(f"oci.py: --xattr for paths not in {src}: {sorted(unused_xattrs)}")
    os.replace(tmp, out / file_name)
    descriptor = {
        "mediaType": media_type,
        "digest": blob.digest(),
        "size": blob.size,
        "diffID": tar_stream.digest(),
        "file": file_name,
    }
    (out / "layer.json").write_text(json.dumps(descriptor, indent=1, sort_keys=True) + "\n")
    print(descriptor["digest"])


def canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return "sha256:" + digest, len(data)


def link_blob(layout: Path, src: Path, digest: str) -> None:
    dst = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        # Another filesystem: copy (the layout is thrown away after the push).
        with open(src, "rb") as r, open(dst, "wb") as w:
            while chunk := r.read(CHUNK):
                w.write(chunk)


def write_image(args: argparse.Namespace) -> None:
    layout = Path(args.out)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layers = []
    for layer_dir in map(Path, args.layer):
        d = json.loads((layer_dir / "layer.json").read_text())
        link_blob(layout, layer_dir / d["file"], d["digest"])
        layers.append(d)
    if args.history and len(args.history) != len(layers):
        raise SystemExit("oci.py: give one --history per --layer")
    container_config: dict = {"Env": args.env}
    for key, value in (("Entrypoint", args.entrypoint), ("Cmd", args.cmd)):
        if value is not None:
            container_config[key] = json.loads(value)
            if not (isinstance(container_config[key], list)
                    and all(isinstance(a, str) for a in container_config[key])):
                raise SystemExit(f"oci.py: --{key.lower()} must be a JSON list of strings")
    if args.user:
        container_config["User"] = args.user
    if args.workdir:
        container_config["WorkingDir"] = args.workdir
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [d["diffID"] for d in layers]},
        "history": [{"created_by": h} for h in args.history],
    }
    config_digest, config_size = put_blob(layout, canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]} for d in layers
        ],
    }
    manifest_digest, manifest_size = put_blob(layout, canonical(manifest))
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": MANIFEST_MEDIA_TYPE, "digest": manifest_digest, "size": manifest_size}
        ],
    }
    (layout / "index.json").write_bytes(canonical(index))
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    print(manifest_digest)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    layer = sub.add_parser("layer", help="a layer blob from a directory")
    layer.add_argument("--from", dest="src", required=True)
    layer.add_argument("--out", required=True)
    layer.add_argument("--compression", choices=sorted(LAYER_MEDIA_TYPES), default="none")
    times = layer.add_mutually_exclusive_group()
    times.add_argument("--mtime", type=int, help="every entry's mtime (seconds since 1970)")
    times.add_argument("--clamp-mtime-from", type=int, metavar="T",
                       help="clamp mtimes to the newest one older than T (see newest_mtime_before)")
    layer.add_argument("--exclude-contents", action="append", default=[], metavar="PATH",
                       help="keep the directory PATH but none of its contents (dev, proc)")
    layer.add_argument("--xattr", action="append", default=[], metavar="PATH=KEY=HEX")
    layer.set_defaults(run=write_layer)

    image = sub.add_parser("image", help="an OCI image layout from layers and a config")
    image.add_argument("--layer", action="append", required=True, help="a `layer --out` dir")
    image.add_argument("--out", required=True)
    image.add_argument("--env", action="append", default=[], metavar="K=V")
    image.add_argument("--entrypoint", metavar="JSON")
    image.add_argument("--cmd", metavar="JSON")
    image.add_argument("--user")
    image.add_argument("--workdir")
    image.add_argument("--history", action="append", default=[], metavar="TEXT",
                       help="what made each layer, in --layer order")
    image.set_defaults(run=write_image)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
