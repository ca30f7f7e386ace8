#!/usr/bin/env bash
# Fails on a dependency that no code uses:
#
#   bash scripts/check-deps.sh
#
# - For each crate under crates/: every name in [dependencies], [dev-dependencies],
#   [build-dependencies] (and their [target.'…'.…] forms) must appear in the crate's Rust code
#   (src/, tests/, benches/, examples/, build.rs) as a path (`name::…`), in `use name` or in
#   `extern crate name`, with `-` spelled `_`. Comments do not count.
# - Every name in the root [workspace.dependencies] must be used by at least one crate.
#
# The same check as `cargo machete` (whose `[package.metadata.cargo-machete] ignored = […]` list
# it honours, for a dependency used in a way this cannot see), written here because installing
# cargo-machete from source took 7.6 minutes on a loaded 2-core machine; switching to it later
# needs no change to any Cargo.toml. Run by scripts/test.sh before the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

exec python3 - "$@" <<'PY'
import os, re, sys, tomllib

DEP_TABLES = ("dependencies", "dev-dependencies", "build-dependencies")

def dep_names(manifest):
    names = {}
    for table in DEP_TABLES:
        for name in manifest.get(table, {}):
            names.setdefault(name, table)
    for target in manifest.get("target", {}).values():
        for table in DEP_TABLES:
            for name in target.get(table, {}):
                names.setdefault(name, f"target.{table}")
    return names

def rust_text(crate_dir):
    parts = []
    for sub in ("src", "tests", "benches", "examples"):
        for root, _, files in os.walk(os.path.join(crate_dir, sub)):
            for f in files:
                if f.endswith(".rs"):
                    with open(os.path.join(root, f), encoding="utf-8") as fh:
                        parts.append(fh.read())
    build = os.path.join(crate_dir, "build.rs")
    if os.path.exists(build):
        with open(build, encoding="utf-8") as fh:
            parts.append(fh.read())
    # Line comments (and doc comments) do not use a crate.
    return re.sub(r"//[^\n]*", "", "\n".join(parts))

def used(ident, text):
    return re.search(
        rf"(\b{ident}\s*::|\buse\s+{ident}\b|\bextern\s+crate\s+{ident}\b)", text
    ) is not None

with open("Cargo.toml", "rb") as fh:
    root = tomllib.load(fh)
problems = []
named_by_crates = set()
for member in sorted(os.listdir("crates")):
    crate_dir = os.path.join("crates", member)
    path = os.path.join(crate_dir, "Cargo.toml")
    if not os.path.exists(path):
        continue
    with open(path, "rb") as fh:
        manifest = tomllib.load(fh)
    ignored = set(
        manifest.get("package", {}).get("metadata", {}).get("cargo-machete", {}).get("ignored", [])
    )
    text = rust_text(crate_dir)
    for name, table in sorted(dep_names(manifest).items()):
        named_by_crates.add(name)
        if name in ignored:
            continue
        if not used(name.replace("-", "_"), text):
            problems.append(f"{path}: [{table}] {name} is not used by any code of this crate")
for name in sorted(root.get("workspace", {}).get("dependencies", {})):
    if name not in named_by_crates:
        problems.append(f"Cargo.toml: [workspace.dependencies] {name} is not used by any crate")

if problems:
    print("unused dependencies:")
    for p in problems:
        print(f"  {p}")
    print(
        "remove each from the Cargo.toml named; if one is used in a way this check cannot see "
        "(a macro expanding to it, a feature only), add it to that crate's "
        '[package.metadata.cargo-machete] ignored = ["name"] with a comment saying why'
    )
    sys.exit(1)
print("no unused dependencies")
PY
